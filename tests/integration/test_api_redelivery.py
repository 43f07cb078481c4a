"""Manual retry, replay and the dead-letter list, over rows as the dispatcher writes them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import make_sessionmaker
from shared.models import DeliveryAttempt, Event
from shared.records import DeliveryJob
from shared.settings import Settings
from shared.topics import Topics
from tests.support.broker import IngestServer, TopicProbe, running_ingest
from tests.support.stack import IsolatedStack


@pytest.fixture(scope="module")
def ingest(
    stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IngestServer]:
    with running_ingest(stack, tmp_path_factory.mktemp("redelivery")) as server:
        yield server
    assert "Traceback" not in server.log()


@pytest.fixture
async def client(ingest: IngestServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ingest.url, timeout=15, headers=ingest.auth) as c:
        yield c


@pytest.fixture
async def deliveries(settings: Settings) -> AsyncIterator[TopicProbe]:
    topic = Topics.from_settings(settings).deliveries
    async with TopicProbe(settings.kafka_bootstrap, topic) as probe:
        yield probe


async def history(
    engine: AsyncEngine,
    sub_id: uuid.UUID,
    statuses: list[str],
    *,
    at: datetime | None = None,
    with_event: bool = True,
    trigger: str = "ingest",
) -> dict[str, Any]:
    """One event and one delivery with the given attempt statuses, oldest first."""
    event_id = uuid.uuid4()
    delivery_id = uuid.uuid5(event_id, str(sub_id))
    start = at or datetime.now(UTC) - timedelta(minutes=10)
    body = b'{"order": "%s"}' % str(event_id).encode()
    async with make_sessionmaker(engine).begin() as session:
        if with_event:
            await session.execute(
                insert(Event).values(
                    id=event_id,
                    received_at=start,
                    event_type="order.paid",
                    subscription_id=sub_id,
                    content_type="application/json",
                    body=body,
                )
            )
        await session.execute(
            insert(DeliveryAttempt),
            [
                {
                    "id": uuid.uuid4(),
                    "created_at": start + timedelta(seconds=n),
                    "delivery_id": delivery_id,
                    "event_id": event_id,
                    "subscription_id": sub_id,
                    "target_url": "https://e.com/",
                    "event_type": "order.paid",
                    "attempt_number": n,
                    "status_code": 200 if status == "SUCCESS" else 500,
                    "status": status,
                    "error_details": None if status == "SUCCESS" else f"HTTP 500 (attempt {n})",
                    "trigger": trigger,
                    "first_received_at": start,
                }
                for n, status in enumerate(statuses, start=1)
            ],
        )
    return {"event_id": event_id, "delivery_id": delivery_id, "body": body, "received": start}


async def new_subscription(client: httpx.AsyncClient) -> uuid.UUID:
    r = await client.post("/subscriptions/", json={"target_url": "https://e.com/"})
    return uuid.UUID(r.json()["id"])


async def test_manual_retry_publishes_a_fresh_series(
    client: httpx.AsyncClient, engine: AsyncEngine, deliveries: TopicProbe
) -> None:
    sub_id = await new_subscription(client)
    h = await history(engine, sub_id, ["FAILED_ATTEMPT", "FAILED_ATTEMPT", "FAILURE"])
    r = await client.post(f"/status/deliveries/{h['delivery_id']}/retry")
    assert r.status_code == 202, r.text
    assert r.json()["trigger"] == "manual-retry"
    [record] = await deliveries.new_records()
    job = DeliveryJob.decode(record.value, record.headers)
    assert (job.delivery_id, job.event_id, job.subscription_id) == (
        h["delivery_id"],
        h["event_id"],
        sub_id,
    )
    assert (job.attempt, job.trigger, job.body, job.event_type) == (
        1,
        "manual-retry",
        h["body"],
        "order.paid",
    )
    assert job.first_received_at == h["received"]
    assert record.key == str(sub_id).encode()


async def test_manual_retry_refusals(
    client: httpx.AsyncClient, engine: AsyncEngine, deliveries: TopicProbe
) -> None:
    sub_id = await new_subscription(client)
    in_progress = await history(engine, sub_id, ["FAILED_ATTEMPT"])
    expired = await history(engine, sub_id, ["FAILURE"], with_event=False)
    r = await client.post(f"/status/deliveries/{in_progress['delivery_id']}/retry")
    assert r.status_code == 409
    r = await client.post(f"/status/deliveries/{expired['delivery_id']}/retry")
    assert r.status_code == 410
    assert (await client.post(f"/status/deliveries/{uuid.uuid4()}/retry")).status_code == 404
    assert (await client.post("/status/deliveries/nope/retry")).status_code == 422

    succeeded = await history(engine, sub_id, ["SUCCESS"])
    await client.patch(f"/subscriptions/{sub_id}", json={"is_active": False})
    r = await client.post(f"/status/deliveries/{succeeded['delivery_id']}/retry")
    assert r.status_code == 409
    assert "inactive" in r.json()["detail"]
    await client.delete(f"/subscriptions/{sub_id}")
    r = await client.post(f"/status/deliveries/{succeeded['delivery_id']}/retry")
    assert r.status_code == 404
    assert await deliveries.new_count() == 0


async def test_replay_resends_only_failures_still_dead_since_the_time(
    client: httpx.AsyncClient, engine: AsyncEngine, deliveries: TopicProbe
) -> None:
    sub_id = await new_subscription(client)
    other_sub = await new_subscription(client)
    now = datetime.now(UTC)
    dead = [
        await history(engine, sub_id, ["FAILED_ATTEMPT", "FAILURE"], at=now - timedelta(hours=1)),
        await history(engine, sub_id, ["FAILURE"], at=now - timedelta(minutes=5)),
    ]
    await history(engine, sub_id, ["SUCCESS"], at=now - timedelta(minutes=5))
    old = await history(engine, sub_id, ["FAILURE"], at=now - timedelta(days=2))  # before `since`
    await history(engine, other_sub, ["FAILURE"], at=now - timedelta(minutes=5))
    # Failed, then retried by hand with success: no longer dead.
    revived = await history(engine, sub_id, ["FAILURE"], at=now - timedelta(minutes=30))
    async with make_sessionmaker(engine).begin() as session:
        await session.execute(
            insert(DeliveryAttempt).values(
                id=uuid.uuid4(),
                created_at=now - timedelta(minutes=20),
                delivery_id=revived["delivery_id"],
                event_id=revived["event_id"],
                subscription_id=sub_id,
                target_url="https://e.com/",
                event_type="order.paid",
                attempt_number=1,
                status_code=200,
                status="SUCCESS",
                trigger="manual-retry",
            )
        )
    expired = await history(
        engine, sub_id, ["FAILURE"], at=now - timedelta(minutes=3), with_event=False
    )

    # The dead-letter list agrees before the replay.
    r = await client.get("/status/dlq", params={"subscription_id": str(sub_id)})
    assert r.status_code == 200, r.text
    listed = [item["delivery_id"] for item in r.json()["items"]]
    assert listed == [
        str(expired["delivery_id"]),
        str(dead[1]["delivery_id"]),
        str(dead[0]["delivery_id"]),
        str(old["delivery_id"]),  # still dead, but outside the replay window below
    ]
    first = r.json()["items"][2]
    assert (first["attempts"], first["last_error"], first["last_status_code"]) == (
        2,
        "HTTP 500 (attempt 2)",
        500,
    )

    since = (now - timedelta(days=1)).isoformat()
    r = await client.post(f"/status/subscriptions/{sub_id}/replay", params={"since": since})
    assert r.status_code == 202, r.text
    answer = r.json()
    assert answer["replayed"] == 2
    assert answer["expired"] == 1
    assert set(answer["delivery_ids"]) == {str(d["delivery_id"]) for d in dead}
    jobs = [DeliveryJob.decode(r.value, r.headers) for r in await deliveries.new_records()]
    assert {(j.delivery_id, j.trigger, j.attempt, j.body) for j in jobs} == {
        (d["delivery_id"], "replay", 1, d["body"]) for d in dead
    }


async def test_replay_refusals(client: httpx.AsyncClient, deliveries: TopicProbe) -> None:
    assert (await client.post(f"/status/subscriptions/{uuid.uuid4()}/replay")).status_code == 404
    sub_id = await new_subscription(client)
    r = await client.post(f"/status/subscriptions/{sub_id}/replay", params={"since": "yesterday"})
    assert r.status_code == 422
    r = await client.post(f"/status/subscriptions/{sub_id}/replay")
    assert (r.status_code, r.json()["replayed"]) == (202, 0)
    assert await deliveries.new_count() == 0


async def test_dead_letter_list_limits(client: httpx.AsyncClient) -> None:
    assert (await client.get("/status/dlq", params={"limit": 1001})).status_code == 422
    assert (await client.get("/status/dlq", params={"subscription_id": "x"})).status_code == 422
    r = await client.get("/status/dlq", params={"limit": 1})
    assert r.status_code == 200
    assert r.json()["count"] <= 1
