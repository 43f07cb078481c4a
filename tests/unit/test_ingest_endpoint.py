"""POST /ingest/{id}: the ASGI fast path and the documented FastAPI route answer alike.

In-process, with a fake cache and publisher: every case is sent once through the app as
built (fast path in front) and once through the same app without the fast path.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from starlette.types import Receive, Scope, Send

from services.ingest.app import create_app
from services.ingest.idempotency import IdempotencyStore
from services.ingest.ingest_endpoint import IngestFastPath
from services.ingest.ingestion import Ingestion
from shared.records import EventRecord, delivery_id_for
from shared.settings import Settings
from shared.subscriptions import SubscriptionView
from shared.topics import Topics

SECRET = "unit-secret"
SUB = SubscriptionView(uuid.uuid4(), "https://e.com/", SECRET, frozenset({"a"}), True)


class FakeCache:
    async def get(self, subscription_id: uuid.UUID) -> SubscriptionView | None:
        return SUB if subscription_id == SUB.id else None


class FakePublisher:
    def __init__(self) -> None:
        self.records: list[EventRecord] = []

    async def publish_event(self, topic: str, record: EventRecord) -> None:
        self.records.append(record)


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def build(fast_path: bool) -> tuple[Any, FakePublisher]:
    settings = Settings(api_key=SecretStr("k"), max_body_bytes=1024)
    app = create_app(settings)
    if not fast_path:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not IngestFastPath]
    publisher = FakePublisher()
    ingestion = Ingestion(
        settings,
        Topics.from_settings(settings),
        FakeCache(),  # type: ignore[arg-type]
        publisher,  # type: ignore[arg-type]
        IdempotencyStore(None, settings),  # type: ignore[arg-type]
    )
    state = {"resources": SimpleNamespace(ingestion=ingestion)}

    async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = dict(state)  # what uvicorn does with the lifespan state
        await app(scope, receive, send)

    return with_state, publisher


CASES: list[tuple[str, str, bytes, dict[str, str], int]] = [
    ("accepted", f"/ingest/{SUB.id}", b'{"x": 1}', {"x-webhook-event": "a"}, 202),
    ("filtered", f"/ingest/{SUB.id}", b'{"x": 1}', {"x-webhook-event": "b"}, 200),
    ("no signature", f"/ingest/{SUB.id}", b'{"x": 1}', {"x-hub-signature-256": ""}, 401),
    ("not json", f"/ingest/{SUB.id}", b"nope", {}, 400),
    ("too large", f"/ingest/{SUB.id}", b'{"p": "' + b"x" * 2000 + b'"}', {}, 413),
    ("unknown", f"/ingest/{uuid.uuid4()}", b"{}", {}, 404),
    ("malformed id", "/ingest/nope", b"{}", {}, 422),
    ("empty event type", f"/ingest/{SUB.id}", b"{}", {"x-webhook-event": ""}, 422),
    ("long event type", f"/ingest/{SUB.id}", b"{}", {"x-webhook-event": "e" * 201}, 422),
    ("extra segment", f"/ingest/{SUB.id}/more", b"{}", {}, 404),
]


@pytest.mark.parametrize(("case", "path", "body", "headers", "status"), CASES)
async def test_fast_path_and_route_agree(
    case: str, path: str, body: bytes, headers: dict[str, str], status: int
) -> None:
    answers = []
    for fast_path in (True, False):
        app, publisher = build(fast_path)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            sent = {"x-hub-signature-256": sign(body)} | headers
            r = await client.post(path, content=body, headers=sent)
        assert r.status_code == status, (fast_path, r.text)
        assert r.headers["content-type"] == "application/json"
        answer = r.json()
        if status == 202:
            [record] = publisher.records
            assert record.body == body
            assert answer["delivery_id"] == str(delivery_id_for(record.event_id, SUB.id))
            answer = {k: v for k, v in answer.items() if k not in ("delivery_id", "event_id")}
        else:
            assert publisher.records == []
        answers.append(answer)
    assert answers[0] == answers[1]


async def test_get_on_the_ingest_path_is_not_served_by_the_fast_path() -> None:
    app, _ = build(True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        r = await client.get(f"/ingest/{SUB.id}")
    assert (r.status_code, r.json()) == (405, {"detail": "Method Not Allowed"})
