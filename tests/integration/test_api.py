"""Management, status and tools routes through real HTTP against `python -m services.ingest`."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import make_sessionmaker
from shared.models import DEFAULT_APPLICATION_ID, DeliveryAttempt, Event
from shared.redis import make_redis
from shared.settings import Settings
from shared.subscriptions import SubscriptionCache
from tests.support.broker import IngestServer, running_ingest
from tests.support.stack import ROOT, IsolatedStack

SECRET = "api-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def ingest(
    stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IngestServer]:
    with running_ingest(stack, tmp_path_factory.mktemp("api")) as server:
        yield server
    log = server.log()
    # Secrets never reach a log line, whatever the route did with them.
    assert SECRET not in log
    assert server.api_key not in log
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture
async def client(ingest: IngestServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ingest.url, timeout=15, headers=ingest.auth) as c:
        yield c


# --- subscriptions ------------------------------------------------------------------


async def test_crud_round_trip_never_shows_the_secret_after_create(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post(
        "/subscriptions/",
        json={
            "target_url": "https://example.com/hooks/a?x=1",
            "secret_key": SECRET,
            "event_types": ["a.created", "a.created", "a.deleted"],
        },
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["secret_key"] == SECRET
    assert created["event_types"] == ["a.created", "a.deleted"]
    assert created["is_active"] is True
    assert set(created) == {
        "id",
        "target_url",
        "event_types",
        "is_active",
        "created_at",
        "updated_at",
        "secret_key",
        "deactivated_reason",
        "application_id",
        "filter",
        "headers",
        "rate_limit",
        "ordered",
        "secret_rotated_at",
        "previous_secret_expires_at",
    }
    assert created["deactivated_reason"] is None
    sub_id = created["id"]

    got = await client.get(f"/subscriptions/{sub_id}")
    assert got.status_code == 200
    assert got.json() == {k: v for k, v in created.items() if k != "secret_key"}

    listed = await client.get("/subscriptions/", params={"limit": 1000})
    assert listed.status_code == 200
    assert sub_id in {s["id"] for s in listed.json()}
    for text in (got.text, listed.text):
        assert SECRET not in text
        assert "secret_key" not in text

    r = await client.patch(
        f"/subscriptions/{sub_id}",
        json={"event_types": [], "is_active": False, "target_url": "http://example.org/b"},
    )
    assert r.status_code == 200, r.text
    patched = r.json()
    assert (patched["event_types"], patched["is_active"], patched["target_url"]) == (
        [],
        False,
        "http://example.org/b",
    )
    assert patched["updated_at"] > created["updated_at"]
    assert patched["created_at"] == created["created_at"]
    assert SECRET not in r.text

    assert (await client.delete(f"/subscriptions/{sub_id}")).status_code == 204
    assert (await client.get(f"/subscriptions/{sub_id}")).status_code == 404
    assert (await client.delete(f"/subscriptions/{sub_id}")).status_code == 404
    assert (await client.patch(f"/subscriptions/{sub_id}", json={})).status_code == 404


async def test_list_pages_in_creation_order(client: httpx.AsyncClient) -> None:
    ids = []
    for i in range(3):
        r = await client.post("/subscriptions/", json={"target_url": f"https://e.com/{i}"})
        ids.append(r.json()["id"])
    everything = [s["id"] for s in (await client.get("/subscriptions/?limit=1000")).json()]
    start = everything.index(ids[0])
    page = await client.get("/subscriptions/", params={"skip": start + 1, "limit": 1})
    assert [s["id"] for s in page.json()] == [ids[1]]
    assert (await client.get("/subscriptions/", params={"limit": 1001})).status_code == 422
    assert (await client.get("/subscriptions/", params={"limit": 0})).status_code == 422
    assert (await client.get("/subscriptions/", params={"skip": -1})).status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        {"target_url": "ftp://example.com/x"},
        {"target_url": "javascript:alert(1)"},
        {"target_url": "file:///etc/passwd"},
        {"target_url": "https://"},
        {"target_url": "https://exa mple.com/"},
        {"target_url": "https://example.com:99999/"},
        {"target_url": "https://example.com/" + "a" * 2100},
        {"target_url": "https://example.com/", "event_types": [""]},
        {"target_url": "https://example.com/", "event_types": "a.created"},
        {"target_url": "https://example.com/", "secret_key": ""},
        {"target_url": "https://example.com/", "unknown_field": 1},
        {},
    ],
)
async def test_invalid_subscriptions_are_422(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    r = await client.post("/subscriptions/", json=body)
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], list)


async def test_validation_errors_do_not_echo_the_secret(client: httpx.AsyncClient) -> None:
    r = await client.post("/subscriptions/", json={"target_url": 5, "secret_key": SECRET * 40})
    assert r.status_code == 422
    assert SECRET not in r.text


async def test_patch_rejects_nulls_except_secret_removal(client: httpx.AsyncClient) -> None:
    sub = (
        await client.post(
            "/subscriptions/", json={"target_url": "https://e.com/", "secret_key": SECRET}
        )
    ).json()
    assert (
        await client.patch(f"/subscriptions/{sub['id']}", json={"target_url": None})
    ).status_code == 422
    assert (
        await client.patch(f"/subscriptions/{sub['id']}", json={"is_active": None})
    ).status_code == 422
    r = await client.patch(f"/subscriptions/{sub['id']}", json={"secret_key": None})
    assert r.status_code == 200
    # Without a secret, an unsigned webhook is accepted.
    r = await client.post(f"/ingest/{sub['id']}", content=b"{}")
    assert r.status_code == 202, r.text


async def test_malformed_and_unknown_ids(client: httpx.AsyncClient) -> None:
    for path in ("/subscriptions/nope", "/status/deliveries/nope", "/status/events/1"):
        r = await client.get(path)
        assert r.status_code == 422, (path, r.text)
    for path in (
        f"/subscriptions/{uuid.uuid4()}",
        f"/status/deliveries/{uuid.uuid4()}",
        f"/status/events/{uuid.uuid4()}",
        f"/status/subscriptions/{uuid.uuid4()}/deliveries",
    ):
        r = await client.get(path)
        assert r.status_code == 404, (path, r.text)
        assert isinstance(r.json()["detail"], str)
    r = await client.get("/no/such/route")
    assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})


async def test_malformed_json_is_400_and_oversized_is_413(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    r = await client.post(
        "/subscriptions/", content=b'{"target_url": ', headers={"content-type": "application/json"}
    )
    assert (r.status_code, r.json()) == (400, {"detail": "the request body is not valid JSON"})
    big = json.dumps({"target_url": "https://e.com/", "pad": "x" * settings.max_body_bytes})
    r = await client.post(
        "/subscriptions/", content=big.encode(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert r.json()["detail"].startswith("request body is larger than")


# --- authentication -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/subscriptions/"),
        ("POST", "/subscriptions/"),
        ("GET", f"/subscriptions/{uuid.uuid4()}"),
        ("PATCH", f"/subscriptions/{uuid.uuid4()}"),
        ("DELETE", f"/subscriptions/{uuid.uuid4()}"),
        ("GET", f"/status/deliveries/{uuid.uuid4()}"),
        ("GET", f"/status/events/{uuid.uuid4()}"),
        ("GET", f"/status/subscriptions/{uuid.uuid4()}/deliveries"),
        ("POST", "/tools/signature-generator"),
        ("POST", "/events"),
    ],
)
async def test_management_routes_need_the_api_key(
    ingest: IngestServer, method: str, path: str
) -> None:
    async with httpx.AsyncClient(base_url=ingest.url, timeout=15) as anonymous:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {ingest.api_key}"},
            {"Authorization": f"Bearer {ingest.api_key}x"},
        ):
            r = await anonymous.request(method, path, headers=headers, json={})
            assert r.status_code == 401, (headers, r.text)
            assert r.json() == {"detail": "missing or invalid API key"}
            assert r.headers["WWW-Authenticate"] == "Bearer"


async def test_open_routes(ingest: IngestServer) -> None:
    async with httpx.AsyncClient(base_url=ingest.url, timeout=15) as anonymous:
        assert (await anonymous.get("/health")).json() == {"status": "ok"}
        ready = await anonymous.get("/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"postgres": "ok", "redis": "ok", "kafka": "ok"}
        metrics = await anonymous.get("/metrics")
        assert metrics.status_code == 200
        assert "hookstream_ingested_total" in metrics.text
        assert (await anonymous.get("/docs")).status_code == 200
        assert (await anonymous.get("/openapi.json")).status_code == 200


def test_refuses_to_start_without_an_api_key(stack: IsolatedStack) -> None:
    env = stack.process_env(HOOKSTREAM_API_KEY="")
    result = subprocess.run(
        [sys.executable, "-m", "services.ingest"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "HOOKSTREAM_API_KEY is not set" in result.stderr
    assert "HOOKSTREAM_ALLOW_NO_API_KEY" in result.stderr


def test_dev_flag_starts_without_a_key_but_protected_routes_refuse(
    stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with running_ingest(
        stack,
        tmp_path_factory.mktemp("nokey"),
        HOOKSTREAM_API_KEY="",
        HOOKSTREAM_ALLOW_NO_API_KEY="true",
    ) as server:
        for auth in ({}, {"Authorization": "Bearer x"}):
            r = httpx.get(f"{server.url}/subscriptions/", headers=auth, timeout=5)
            assert r.status_code == 401


# --- tools --------------------------------------------------------------------------


async def test_signature_generator_signs_json_dumps_of_the_payload(
    client: httpx.AsyncClient,
) -> None:
    payload = {"b": [1, 2.5, None], "a": "é", "nested": {"k": True}}
    r = await client.post(
        "/tools/signature-generator", json={"payload": payload, "secret_key": "k3y"}
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["signed_body"] == json.dumps(payload)
    expected = hmac.new(b"k3y", json.dumps(payload).encode(), hashlib.sha256).hexdigest()
    assert out["x_hub_signature_256"] == f"sha256={expected}"


async def test_signature_generator_output_is_accepted_by_ingest(client: httpx.AsyncClient) -> None:
    sub = (
        await client.post(
            "/subscriptions/", json={"target_url": "https://e.com/", "secret_key": SECRET}
        )
    ).json()
    payload = {"hello": "world", "n": 1}
    tool = (
        await client.post(
            "/tools/signature-generator", json={"payload": payload, "secret_key": SECRET}
        )
    ).json()
    r = await client.post(
        f"/ingest/{sub['id']}",
        content=tool["signed_body"].encode(),
        headers={"x-hub-signature-256": tool["x_hub_signature_256"]},
    )
    assert r.status_code == 202, r.text


# --- status -------------------------------------------------------------------------


async def _insert_history(engine: AsyncEngine, sub_id: uuid.UUID) -> dict[str, Any]:
    """Rows as the dispatcher writes them: one event, one delivery retried to success."""
    event_id = uuid.uuid4()
    delivery_id = uuid.uuid5(event_id, str(sub_id))
    received = datetime.now(UTC) - timedelta(minutes=5)
    attempts = [
        {
            "id": uuid.uuid4(),
            "created_at": received + timedelta(seconds=n),
            "delivery_id": delivery_id,
            "event_id": event_id,
            "subscription_id": sub_id,
            "target_url": "https://e.com/",
            "event_type": "a.created",
            "attempt_number": n,
            "status_code": code,
            "status": status,
            "error_details": error,
            "duration_ms": 12,
            "response_excerpt": "oops" if code == 500 else "ok",
            "trigger": "ingest",
            "first_received_at": received,
        }
        for n, code, status, error in (
            (1, 500, "FAILED_ATTEMPT", "HTTP 500"),
            (2, None, "FAILED_ATTEMPT", "timeout"),
            (3, 200, "SUCCESS", None),
        )
    ]
    async with make_sessionmaker(engine).begin() as session:
        await session.execute(
            insert(Event).values(
                id=event_id,
                received_at=received,
                event_type="a.created",
                subscription_id=sub_id,
                content_type="application/json",
                body=b'{"x": 1}',
            )
        )
        await session.execute(insert(DeliveryAttempt), attempts)
    return {"event_id": event_id, "delivery_id": delivery_id, "received": received}


async def test_status_shapes(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    sub = (await client.post("/subscriptions/", json={"target_url": "https://e.com/"})).json()
    sub_id = uuid.UUID(sub["id"])
    history = await _insert_history(engine, sub_id)

    r = await client.get(f"/status/deliveries/{history['delivery_id']}")
    assert r.status_code == 200, r.text
    delivery = r.json()
    assert delivery["delivery_id"] == str(history["delivery_id"])
    assert delivery["subscription_id"] == sub["id"]
    assert delivery["event_id"] == str(history["event_id"])
    assert delivery["total_attempts"] == 3
    assert delivery["latest_status"] == "SUCCESS"
    assert delivery["latest_attempt"]["attempt_number"] == 3
    assert [log["attempt_number"] for log in delivery["logs"]] == [1, 2, 3]
    assert delivery["logs"][0] | {"id": None, "created_at": None} == {
        "id": None,
        "created_at": None,
        "delivery_id": str(history["delivery_id"]),
        "event_id": str(history["event_id"]),
        "subscription_id": sub["id"],
        "target_url": "https://e.com/",
        "event_type": "a.created",
        "attempt_number": 1,
        "status_code": 500,
        "status": "FAILED_ATTEMPT",
        "error_details": "HTTP 500",
        "duration_ms": 12,
        "response_excerpt": "oops",
        "trigger": "ingest",
    }

    r = await client.get(f"/status/subscriptions/{sub_id}/deliveries", params={"limit": 2})
    assert r.status_code == 200, r.text
    per_sub = r.json()
    assert {k: v for k, v in per_sub.items() if k != "recent_logs"} == {
        "subscription_id": sub["id"],
        "total_attempts": 3,
        "successful_deliveries": 1,
        "failed_deliveries": 0,
        "failed_attempts": 2,
    }
    assert [log["attempt_number"] for log in per_sub["recent_logs"]] == [3, 2]
    too_many = await client.get(f"/status/subscriptions/{sub_id}/deliveries?limit=1001")
    assert too_many.status_code == 422

    r = await client.get(f"/status/events/{history['event_id']}")
    assert r.status_code == 200, r.text
    event = r.json()
    assert event["event_type"] == "a.created"
    assert event["subscription_id"] == sub["id"]
    assert event["size_bytes"] == len(b'{"x": 1}')
    assert event["deliveries"] == [
        {
            "delivery_id": str(history["delivery_id"]),
            "subscription_id": sub["id"],
            "total_attempts": 3,
            "latest_status": "SUCCESS",
            "latest_attempt_at": delivery["latest_attempt"]["created_at"],
        }
    ]

    # Deleting the subscription keeps its history readable.
    assert (await client.delete(f"/subscriptions/{sub_id}")).status_code == 204
    assert (await client.get(f"/status/deliveries/{history['delivery_id']}")).status_code == 200
    r = await client.get(f"/status/subscriptions/{sub_id}/deliveries")
    assert (r.status_code, r.json()["total_attempts"]) == (200, 3)


async def test_subscription_without_history_has_empty_totals(client: httpx.AsyncClient) -> None:
    sub = (await client.post("/subscriptions/", json={"target_url": "https://e.com/"})).json()
    r = await client.get(f"/status/subscriptions/{sub['id']}/deliveries")
    assert r.status_code == 200
    assert r.json()["total_attempts"] == 0
    assert r.json()["recent_logs"] == []


# --- cache invalidation across processes -------------------------------------------


async def test_another_process_sees_changes_within_a_second(
    client: httpx.AsyncClient, settings: Settings, engine: AsyncEngine
) -> None:
    """A second cache (as the dispatcher holds) follows changes made through the API.

    Its poll interval is a minute, so only the pub/sub push can explain a prompt update;
    the default application's index is loaded once, before the changes, and then only
    follows the change log.
    """
    redis = make_redis(settings)
    other = SubscriptionCache(make_sessionmaker(engine), redis, settings.topic_prefix, 60)
    await other.start()
    event_type = f"cache.{uuid.uuid4().hex[:8]}"

    async def ids() -> set[str]:
        held = await other.matching(DEFAULT_APPLICATION_ID, event_type)
        return {str(v.id) for v in held if event_type in v.event_types}

    async def seen(predicate: Any) -> float:
        started = time.monotonic()
        while not predicate(await ids()):
            assert time.monotonic() - started < 1.0, "change not seen within a second"
            await asyncio.sleep(0.01)
        return time.monotonic() - started

    try:
        assert await ids() == set()
        await asyncio.wait_for(other.listening.wait(), 10)
        r = await client.post(
            "/subscriptions/", json={"target_url": "https://e.com/", "event_types": [event_type]}
        )
        sub_id = r.json()["id"]
        await seen(lambda held: sub_id in held)
        await client.patch(f"/subscriptions/{sub_id}", json={"is_active": False})
        await seen(lambda held: sub_id not in held)
        await client.patch(f"/subscriptions/{sub_id}", json={"is_active": True})
        await seen(lambda held: sub_id in held)
        await client.delete(f"/subscriptions/{sub_id}")
        await seen(lambda held: sub_id not in held)
    finally:
        await other.stop()
        await redis.aclose()


# --- OpenAPI ------------------------------------------------------------------------


async def test_openapi_documents_every_route_header_and_error(ingest: IngestServer) -> None:
    async with httpx.AsyncClient(base_url=ingest.url, timeout=15) as anonymous:
        spec = (await anonymous.get("/openapi.json")).json()
    paths = spec["paths"]
    assert set(paths) >= {
        "/ingest/{subscription_id}",
        "/events",
        "/subscriptions/",
        "/subscriptions/{subscription_id}",
        "/status/deliveries/{delivery_id}",
        "/status/subscriptions/{subscription_id}/deliveries",
        "/status/events/{event_id}",
        "/tools/signature-generator",
        "/health",
        "/ready",
        "/metrics",
    }
    ingest_op = paths["/ingest/{subscription_id}"]["post"]
    params = {(p["in"], p["name"]) for p in ingest_op["parameters"]}
    assert params == {
        ("path", "subscription_id"),
        ("header", "x-hub-signature-256"),
        ("header", "x-webhook-event"),
        ("header", "Idempotency-Key"),
    }
    assert set(ingest_op["responses"]) == {
        "200",
        "202",
        "400",
        "401",
        "404",
        "409",
        "413",
        "422",
        "503",
    }
    assert "security" not in ingest_op  # authenticated by signature
    assert "Retry-After" in ingest_op["responses"]["503"]["headers"]
    events_op = paths["/events"]["post"]
    assert {(p["in"], p["name"]) for p in events_op["parameters"]} == {
        ("header", "x-webhook-event"),
        ("header", "Idempotency-Key"),
    }
    # Authorization: Bearer, on every management route.
    assert spec["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <key>`: the operator key (HOOKSTREAM_API_KEY) "
        "or an application's scoped key (`hsk_…`)",
    }
    open_routes = {"/ingest/{subscription_id}", "/health", "/ready", "/metrics"}
    for path, ops in paths.items():
        for method, op in ops.items():
            if path not in open_routes:
                assert op.get("security") == [{"ApiKey": []}], (method, path)
                assert "401" in op["responses"], (method, path)
            if "{" in path:
                assert "422" in op["responses"], (method, path)
    assert (
        spec["components"]["schemas"]["SubscriptionCreate"]["properties"]["target_url"]["maxLength"]
        == 2048
    )


async def test_oversized_headers_are_431_on_management_routes(
    client: httpx.AsyncClient, stack: IsolatedStack
) -> None:
    r = await client.get(
        "/subscriptions/", headers={"x-padding": "p" * stack.settings().max_header_bytes}
    )
    assert r.status_code == 431
    assert "larger than" in r.json()["detail"]
