"""POST /ingest/{id} and POST /events through real HTTP, with the record checked on the topic.

One ingest process (python -m services.ingest) per module, on the session's database,
Redis and Kafka topic prefix; every test reads the events topic from a mark taken before
its requests, so "nothing on the topic" is exact (end offsets did not move).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from shared.models import DEFAULT_APPLICATION_ID
from shared.records import EventRecord, delivery_id_for
from shared.settings import Settings
from shared.topics import Topics
from tests.support.broker import IngestServer, TopicProbe, running_ingest
from tests.support.stack import IsolatedStack

SECRET = "s3cr3t-ingest-" + uuid.uuid4().hex


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture(scope="module")
def ingest(
    stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IngestServer]:
    with running_ingest(stack, tmp_path_factory.mktemp("ingest")) as server:
        yield server
    log = server.log()
    assert SECRET not in log
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture
async def client(ingest: IngestServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ingest.url, timeout=15) as c:
        yield c


@pytest.fixture
async def events(settings: Settings) -> AsyncIterator[TopicProbe]:
    async with TopicProbe(settings.kafka_bootstrap, Topics.from_settings(settings).events) as probe:
        yield probe


async def create_subscription(
    client: httpx.AsyncClient, ingest: IngestServer, **fields: Any
) -> dict[str, Any]:
    body = {"target_url": "https://example.com/hook", "secret_key": SECRET} | fields
    r = await client.post("/subscriptions/", json=body, headers=ingest.auth)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def test_signed_ingest_is_published_with_exact_bytes_and_headers(
    client: httpx.AsyncClient, ingest: IngestServer, events: TopicProbe
) -> None:
    sub = await create_subscription(client, ingest, event_types=["order.created"])
    # Odd spacing and key order: the record must carry these bytes, not a re-serialisation.
    body = b'{ "z": 1,   "a": [1, 2.50, "\\u00e9"] }'
    r = await client.post(
        f"/ingest/{sub['id']}",
        content=body,
        headers={
            "x-hub-signature-256": sign(body),
            "x-webhook-event": "order.created",
            "content-type": "application/json; charset=utf-8",
        },
    )
    assert r.status_code == 202, r.text
    answer = r.json()
    assert answer["status"] == "accepted"
    assert answer["message"]
    event_id = uuid.UUID(answer["event_id"])
    assert uuid.UUID(answer["delivery_id"]) == delivery_id_for(event_id, uuid.UUID(sub["id"]))

    [record] = await events.new_records()
    assert record.value == body
    assert record.key == sub["id"].encode()
    decoded = EventRecord.decode(record.value, record.headers)
    assert decoded.event_id == event_id
    assert decoded.event_type == "order.created"
    assert decoded.subscription_id == uuid.UUID(sub["id"])
    assert decoded.content_type == "application/json; charset=utf-8"
    assert {k for k, _ in record.headers} == {
        "event_id",
        "event_type",
        "received_at",
        "content_type",
        "subscription_id",
        "application_id",
    }
    assert decoded.application_id == uuid.UUID(sub["application_id"])


async def test_legacy_json_dumps_signature_is_accepted(
    client: httpx.AsyncClient, ingest: IngestServer, events: TopicProbe
) -> None:
    sub = await create_subscription(client, ingest)
    payload = {"b": 1, "a": {"x": [1, 2]}}
    body = b'{"b":1,"a":{"x":[1,2]}}'  # compact on the wire ...
    legacy = json.dumps(payload).encode()  # ... signed as the original service did
    assert body != legacy
    r = await client.post(
        f"/ingest/{sub['id']}", content=body, headers={"x-hub-signature-256": sign(legacy)}
    )
    assert r.status_code == 202, r.text
    [record] = await events.new_records()
    assert record.value == body


async def test_subscription_without_secret_needs_no_signature(
    client: httpx.AsyncClient, ingest: IngestServer, events: TopicProbe
) -> None:
    sub = await create_subscription(client, ingest, secret_key=None)
    r = await client.post(f"/ingest/{sub['id']}", content=b"[1, 2, 3]")
    assert r.status_code == 202, r.text
    [record] = await events.new_records()
    assert EventRecord.decode(record.value, record.headers).event_type == "webhook"


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("wrong signature", 401),
        ("signature with another secret", 401),
        ("missing signature", 401),
        ("not json", 400),
        ("empty body", 400),
        ("oversized", 413),
        ("oversized, chunked", 413),
        ("unknown subscription", 404),
        ("malformed uuid", 422),
        ("idempotency key too long", 422),
        ("oversized headers", 431),
    ],
)
async def test_rejected_requests_publish_nothing(
    client: httpx.AsyncClient,
    ingest: IngestServer,
    events: TopicProbe,
    settings: Settings,
    case: str,
    status: int,
) -> None:
    sub = await create_subscription(client, ingest)
    url = f"/ingest/{sub['id']}"
    body = b'{"ok": true}'
    headers = {"x-hub-signature-256": sign(body)}
    big = b'{"pad": "' + b"x" * settings.max_body_bytes + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 16384):
            yield big[i : i + 16384]

    kwargs: dict[str, Any] = {"content": body, "headers": headers}
    match case:
        case "wrong signature":
            kwargs["headers"] = {"x-hub-signature-256": "sha256=" + "0" * 64}
        case "signature with another secret":
            kwargs["headers"] = {"x-hub-signature-256": sign(body, "other")}
        case "missing signature":
            kwargs["headers"] = {}
        case "not json":
            kwargs = {"content": b"not json", "headers": {"x-hub-signature-256": sign(b"not json")}}
        case "empty body":
            kwargs = {"content": b"", "headers": {"x-hub-signature-256": sign(b"")}}
        case "oversized":
            kwargs = {"content": big, "headers": {"x-hub-signature-256": sign(big)}}
        case "oversized, chunked":
            kwargs = {"content": chunks(), "headers": {"x-hub-signature-256": sign(big)}}
        case "unknown subscription":
            url = f"/ingest/{uuid.uuid4()}"
        case "malformed uuid":
            url = "/ingest/not-a-uuid"
        case "idempotency key too long":
            kwargs["headers"] = headers | {"Idempotency-Key": "k" * 256}
        case "oversized headers":
            kwargs["headers"] = headers | {"x-padding": "p" * settings.max_header_bytes}
    r = await client.post(url, **kwargs)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["detail"], str | list)
    assert "Traceback" not in r.text
    assert await events.new_count() == 0


async def test_filtered_event_type_and_inactive_subscription(
    client: httpx.AsyncClient, ingest: IngestServer, events: TopicProbe
) -> None:
    sub = await create_subscription(client, ingest, event_types=["a.created", "a.deleted"])
    body = b"{}"
    headers = {"x-hub-signature-256": sign(body)}
    r = await client.post(
        f"/ingest/{sub['id']}", content=body, headers=headers | {"x-webhook-event": "b.created"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "filtered"
    assert r.json()["reason"] == "event_type_not_subscribed"
    # No x-webhook-event: the default type is not in the list either.
    r = await client.post(f"/ingest/{sub['id']}", content=body, headers=headers)
    assert r.json()["status"] == "filtered"

    r = await client.patch(
        f"/subscriptions/{sub['id']}", json={"is_active": False}, headers=ingest.auth
    )
    assert r.status_code == 200, r.text
    # The change is visible to the very next request.
    r = await client.post(
        f"/ingest/{sub['id']}", content=body, headers=headers | {"x-webhook-event": "a.created"}
    )
    assert r.status_code == 200
    assert r.json()["reason"] == "subscription_inactive"
    # A wrong signature is still a 401 for an inactive subscription.
    r = await client.post(f"/ingest/{sub['id']}", content=body)
    assert r.status_code == 401
    assert await events.new_count() == 0


async def test_secret_rotation_applies_at_once(
    client: httpx.AsyncClient, ingest: IngestServer, events: TopicProbe
) -> None:
    sub = await create_subscription(client, ingest)
    new_secret = SECRET + "-rotated"
    r = await client.patch(
        f"/subscriptions/{sub['id']}", json={"secret_key": new_secret}, headers=ingest.auth
    )
    assert r.status_code == 200
    assert "secret_key" not in r.json()
    body = b'{"n": 1}'
    old = await client.post(
        f"/ingest/{sub['id']}", content=body, headers={"x-hub-signature-256": sign(body)}
    )
    new = await client.post(
        f"/ingest/{sub['id']}",
        content=body,
        headers={"x-hub-signature-256": sign(body, new_secret)},
    )
    assert (old.status_code, new.status_code) == (401, 202)
    assert await events.new_count() == 1


async def test_idempotent_repeat_returns_first_answer_and_publishes_once(
    client: httpx.AsyncClient, ingest: IngestServer, events: TopicProbe
) -> None:
    sub = await create_subscription(client, ingest)
    body = b'{"order": 7}'
    headers = {"x-hub-signature-256": sign(body), "Idempotency-Key": f"order-7-{uuid.uuid4()}"}
    first = await client.post(f"/ingest/{sub['id']}", content=body, headers=headers)
    second = await client.post(f"/ingest/{sub['id']}", content=body, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert await events.new_count() == 1

    # Same key, different body: a client bug, refused rather than answered wrongly.
    other = b'{"order": 8}'
    r = await client.post(
        f"/ingest/{sub['id']}",
        content=other,
        headers=headers | {"x-hub-signature-256": sign(other)},
    )
    assert r.status_code == 422
    # The key is scoped per subscription: another subscription may use it too.
    sub2 = await create_subscription(client, ingest)
    r = await client.post(f"/ingest/{sub2['id']}", content=body, headers=headers)
    assert r.status_code == 202
    assert r.json()["delivery_id"] != first.json()["delivery_id"]
    assert await events.new_count() == 2


async def test_concurrent_duplicates_publish_once(
    client: httpx.AsyncClient, ingest: IngestServer, events: TopicProbe
) -> None:
    sub = await create_subscription(client, ingest)
    body = b'{"burst": true}'
    headers = {"x-hub-signature-256": sign(body), "Idempotency-Key": str(uuid.uuid4())}
    answers = await asyncio.gather(
        *(client.post(f"/ingest/{sub['id']}", content=body, headers=headers) for _ in range(8))
    )
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {202, 409}, codes
    assert 202 in codes
    accepted = {r.json()["delivery_id"] for r in answers if r.status_code == 202}
    assert len(accepted) == 1
    for r in answers:
        if r.status_code == 409:
            assert r.headers["Retry-After"]
    assert await events.new_count() == 1


async def test_failed_request_does_not_consume_the_idempotency_key(
    client: httpx.AsyncClient, ingest: IngestServer, events: TopicProbe
) -> None:
    sub = await create_subscription(client, ingest)
    body = b'{"x": 1}'
    key = {"Idempotency-Key": str(uuid.uuid4())}
    r = await client.post(f"/ingest/{sub['id']}", content=body, headers=key)
    assert r.status_code == 401
    r = await client.post(
        f"/ingest/{sub['id']}", content=body, headers=key | {"x-hub-signature-256": sign(body)}
    )
    assert r.status_code == 202
    assert await events.new_count() == 1


async def test_fanout_event_needs_api_key_and_is_published_by_event_id(
    client: httpx.AsyncClient, ingest: IngestServer, events: TopicProbe
) -> None:
    body = b'{"kind": "broadcast"}'
    r = await client.post("/events", content=body, headers={"x-webhook-event": "news"})
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"
    r = await client.post("/events", content=body, headers=ingest.auth)
    assert r.status_code == 422  # x-webhook-event is required for fan-out
    r = await client.post(
        "/events", content=b"{", headers=ingest.auth | {"x-webhook-event": "news"}
    )
    assert r.status_code == 400
    assert await events.new_count() == 0

    key = {"Idempotency-Key": str(uuid.uuid4())}
    headers = ingest.auth | {"x-webhook-event": "news"} | key
    r = await client.post("/events", content=body, headers=headers)
    assert r.status_code == 202, r.text
    event_id = uuid.UUID(r.json()["event_id"])
    again = await client.post("/events", content=body, headers=headers)
    assert again.json() == r.json()
    [record] = await events.new_records()
    decoded = EventRecord.decode(record.value, record.headers)
    assert (decoded.event_id, decoded.subscription_id, decoded.body) == (event_id, None, body)
    # Keyed by application: one application's events keep their order (ordered delivery).
    assert record.key == str(DEFAULT_APPLICATION_ID).encode()


async def test_ingest_works_without_redis(
    stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory, settings: Settings
) -> None:
    """Redis is an accelerator: with it down, ingest accepts (no dedupe) and warns."""
    dead_redis = "redis://127.0.0.1:1/0"
    log_dir = tmp_path_factory.mktemp("no-redis")
    with running_ingest(stack, log_dir, HOOKSTREAM_REDIS_URL=dead_redis) as server:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=15) as client,
            TopicProbe(settings.kafka_bootstrap, Topics.from_settings(settings).events) as events,
        ):
            sub = await create_subscription(client, server)
            body = b'{"no": "redis"}'
            headers = {"x-hub-signature-256": sign(body), "Idempotency-Key": "same"}
            codes = [
                (
                    await client.post(f"/ingest/{sub['id']}", content=body, headers=headers)
                ).status_code
                for _ in range(2)
            ]
            assert codes == [202, 202]
            assert await events.new_count() == 2
            ready = await client.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["checks"]["redis"].startswith("down")
        log = server.log()
    assert "idempotency keys are not checked" in log
    assert "Traceback" not in log
