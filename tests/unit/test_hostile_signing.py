"""Signature and API key checks compare in constant time: every verdict goes through
``hmac.compare_digest``, whatever the forgery looks like.

Timing itself is not measured (too noisy to mean anything on a shared 2-core machine);
instead ``hmac.compare_digest`` is replaced by a spy that records its arguments and then
answers as the real one does. A comparison done with ``==``, or an early "wrong length"
return, would leave the spy without the call these tests expect.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from starlette.types import Receive, Scope, Send

import shared.signing
from services.ingest.app import create_app
from services.ingest.auth import configured_key, key_matches
from services.ingest.idempotency import IdempotencyStore
from services.ingest.ingestion import Ingestion
from shared.settings import Settings
from shared.signing import hub_signature, verify_hub_signature
from shared.subscriptions import SubscriptionView
from shared.topics import Topics

SECRET = "hostile-secret"
API_KEY = "hostile-api-key-0123456789"
SUB = SubscriptionView(uuid.uuid4(), "https://e.com/", SECRET, frozenset(), True)

Call = tuple[bytes | str, bytes | str]


@pytest.fixture
def compared(monkeypatch: pytest.MonkeyPatch) -> list[Call]:
    """Every hmac.compare_digest call made meanwhile, in order."""
    calls: list[Call] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    # shared.signing and services.ingest.auth both look it up on the hmac module.
    assert vars(shared.signing)["hmac"] is hmac
    monkeypatch.setattr(hmac, "compare_digest", spy)
    return calls


def _forgeries(body: bytes) -> list[str]:
    right = hub_signature(SECRET, body)
    return [
        "sha256=" + "0" * 64,  # right length, wrong value
        right[:-1] + ("0" if right[-1] != "0" else "1"),  # one character off, at the end
        right[:20],  # a prefix of the right one
        right + "00",  # longer
        "sha256=",
        "x",
        right.upper(),
    ]


def test_every_forged_signature_is_judged_by_compare_digest(compared: list[Call]) -> None:
    body = b'{"amount": 42}'
    expected = hub_signature(SECRET, body).encode()
    for forged in _forgeries(body):
        compared.clear()
        assert not verify_hub_signature(SECRET, body, forged)
        assert compared == [(forged.strip().encode(), expected)], forged


def test_the_legacy_form_is_also_compared_in_constant_time(compared: list[Call]) -> None:
    body = b'{"b":1,"a":[1,2]}'
    payload = json.loads(body)
    legacy = hub_signature(SECRET, json.dumps(payload).encode())
    assert verify_hub_signature(SECRET, body, legacy, payload)
    assert [a for a, _ in compared] == [legacy.encode(), legacy.encode()]
    assert compared[1][1] == legacy.encode()
    compared.clear()
    assert not verify_hub_signature(SECRET, body, "sha256=" + "f" * 64, payload)
    assert len(compared) == 2  # raw form, then legacy form: both compared, both refused


def test_api_keys_are_compared_in_constant_time(compared: list[Call]) -> None:
    expected = configured_key(Settings(api_key=SecretStr(API_KEY)))
    for presented in (API_KEY[:-1], API_KEY + "x", "Bearer " + API_KEY, "x" * len(API_KEY)):
        compared.clear()
        assert not key_matches(expected, presented)
        assert compared == [(presented.encode(), API_KEY.encode())]


# --- the same through the HTTP app (in-process, as tests/unit/test_ingest_endpoint.py) ---


class _Cache:
    async def get(self, subscription_id: uuid.UUID) -> SubscriptionView | None:
        return SUB if subscription_id == SUB.id else None


class _Publisher:
    async def publish_event(self, topic: str, record: Any) -> None:
        raise AssertionError("a forged request must not be published")


def _app() -> Any:
    settings = Settings(api_key=SecretStr(API_KEY))
    app = create_app(settings)
    ingestion = Ingestion(
        settings,
        Topics.from_settings(settings),
        _Cache(),  # type: ignore[arg-type]
        _Publisher(),  # type: ignore[arg-type]
        IdempotencyStore(None, settings),  # type: ignore[arg-type]
    )

    async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = {"resources": SimpleNamespace(ingestion=ingestion)}
        await app(scope, receive, send)

    return with_state


async def test_ingest_refuses_forgeries_through_compare_digest(compared: list[Call]) -> None:
    body = b'{"n":1}'  # json.dumps would add a space: the legacy form differs
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for forged in _forgeries(body):
            compared.clear()
            r = await client.post(
                f"/ingest/{SUB.id}", content=body, headers={"x-hub-signature-256": forged}
            )
            assert r.status_code == 401, r.text
            # The raw-body form and the original service's json.dumps form were both
            # compared with what was presented, and nothing was judged any other way.
            assert {a for a, _ in compared} == {forged.strip().encode()}, forged
            expected = {b for _, b in compared}
            assert hub_signature(SECRET, body).encode() in expected
            assert hub_signature(SECRET, json.dumps(json.loads(body)).encode()).encode() in expected


async def test_management_routes_refuse_wrong_keys_through_compare_digest(
    compared: list[Call],
) -> None:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for presented in (API_KEY[:-1], API_KEY + "0", "0" * len(API_KEY)):
            compared.clear()
            r = await client.get(
                "/subscriptions/", headers={"Authorization": f"Bearer {presented}"}
            )
            assert r.status_code == 401, r.text
            assert compared == [(presented.encode(), API_KEY.encode())]


def test_the_spy_sees_what_a_real_signature_check_does(compared: list[Call]) -> None:
    body = b"{}"
    right = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert verify_hub_signature(SECRET, body, right)
    assert compared == [(right.encode(), right.encode())]
