"""The dispatcher end to end: a real process, real Kafka/PostgreSQL/Redis, real HTTP targets.

One dispatcher process serves the module (its own database and topic prefix). Events are
produced exactly as ingest produces them; subscriptions are rows in the table.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import TopicPartition

from shared.records import DeliveryJob, delivery_id_for
from tests.support.dispatch import DispatchWorld
from tests.support.metrics import wait_cache_loaded
from tests.support.procs import ServiceProcess, free_port, running_service
from tests.support.stack import IsolatedStack
from tests.support.targets import BlackHole, Received, TargetServer

# Every test runs against the module's dispatcher process (see conftest.py).
pytestmark = pytest.mark.usefixtures("dispatcher")

# Whitespace, key order and non-ASCII that a re-serialiser would change.
BODY = '{"z": 1,   "a": [1, 2 ,3],\n "s": "h\\u00e9llo é", "n": 1.50}'.encode()
DELIVERY_TIMEOUT = 2.5
CACHE_TTL = 1.0
DISPATCHER_METRICS_PORT = free_port()


# --- an independent implementation of both signature schemes ------------------------


def standard_webhooks_valid(secret: str, received: Received) -> bool:
    h = received.headers
    if secret.startswith("whsec_"):
        key = base64.b64decode(secret.removeprefix("whsec_"))
    else:
        key = secret.encode()
    signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + received.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = h["webhook-signature"].split()
    return any(
        version == "v1" and hmac.compare_digest(sig, expected)
        for version, _, sig in (o.partition(",") for o in offered)
    )


def hub_valid(secret: str, received: Received) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), received.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(received.headers["x-hub-signature-256"], expected)


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dispatcher(
    module_stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    with running_service(
        module_stack,
        "dispatcher",
        tmp_path_factory.mktemp("dispatcher"),
        HOOKSTREAM_DELIVERY_TIMEOUT=str(DELIVERY_TIMEOUT),
        HOOKSTREAM_SUBSCRIPTION_CACHE_TTL=str(CACHE_TTL),
        HOOKSTREAM_METRICS_PORT=str(DISPATCHER_METRICS_PORT),
    ) as proc:
        yield proc
    assert '"event": "drained"' in proc.log()


def kind() -> str:
    """A fresh event type per test, so fan-out never matches another test's subscriptions."""
    return f"order.created.{uuid.uuid4().hex[:8]}"


# --- tests ----------------------------------------------------------------------------


async def test_targeted_delivery_arrives_once_with_exact_body_and_both_signatures(
    world: DispatchWorld, target: TargetServer
) -> None:
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    event_type = kind()
    sub = await world.add_subscription(
        target.url("/signed"), secret=secret, event_types=[event_type]
    )
    event = world.event(event_type, BODY, subscription_id=sub)
    await world.produce_event(event)

    (got,) = await target.wait_for(1, "/signed")
    delivery_id = delivery_id_for(event.event_id, sub)
    assert got.body == BODY
    h = got.headers
    assert h["content-type"] == "application/json"
    assert h["user-agent"].startswith("Hookstream/")
    assert h["webhook-id"] == h["x-webhook-id"] == str(delivery_id)
    assert h["x-webhook-event"] == event_type
    assert abs(int(h["webhook-timestamp"]) - time.time()) < 60
    assert standard_webhooks_valid(secret, got)
    assert hub_valid(secret, got)

    (row,) = await world.wait_attempts("delivery_id = :d", d=delivery_id)
    assert row["status"] == "SUCCESS"
    assert row["status_code"] == 200
    assert row["attempt_number"] == 1
    assert row["event_id"] == event.event_id
    assert row["subscription_id"] == sub
    assert row["target_url"] == target.url("/signed")
    assert row["event_type"] == event_type
    assert row["error_details"] is None
    assert row["response_excerpt"] == "ok"
    assert row["duration_ms"] is not None
    assert row["duration_ms"] >= 0
    assert row["trigger"] == "ingest"
    assert row["first_received_at"] == event.received_at
    stored = await world.scalar("SELECT body FROM events WHERE id = :id", id=event.event_id)
    assert bytes(stored) == BODY

    # Once: nothing else arrives and no second row is written.
    await _settle()
    assert len(target.received("/signed")) == 1
    assert len(await world.attempts("delivery_id = :d", d=delivery_id)) == 1


async def test_plain_secret_signs_with_its_bytes_and_no_secret_means_no_signatures(
    world: DispatchWorld, target: TargetServer
) -> None:
    event_type = kind()
    signed = await world.add_subscription(
        target.url("/plain"), secret="s3cr3t", event_types=[event_type]
    )
    unsigned = await world.add_subscription(target.url("/unsigned"), event_types=[event_type])
    await world.produce_event(world.event(event_type, BODY, subscription_id=signed))
    await world.produce_event(
        world.event(event_type, b"plain text", subscription_id=unsigned, content_type="text/plain")
    )
    (plain,) = await target.wait_for(1, "/plain")
    assert standard_webhooks_valid("s3cr3t", plain)
    assert hub_valid("s3cr3t", plain)
    (bare,) = await target.wait_for(1, "/unsigned")
    assert bare.body == b"plain text"
    assert bare.headers["content-type"] == "text/plain"
    assert "webhook-signature" not in bare.headers
    assert "x-hub-signature-256" not in bare.headers
    assert bare.headers["webhook-id"]


async def test_fanout_reaches_each_matching_active_subscription_once(
    world: DispatchWorld, target: TargetServer
) -> None:
    event_type = kind()
    wanted = [
        await world.add_subscription(target.url(f"/fan/{i}"), event_types=[event_type, "x.y"])
        for i in range(3)
    ]
    await world.add_subscription(target.url("/fan/other-type"), event_types=["other.type"])
    await world.add_subscription(
        target.url("/fan/inactive"), event_types=[event_type], active=False
    )
    # Fan-out matches against the dispatcher's subscription snapshot, reloaded on the
    # change message and at least every CACHE_TTL: wait until it holds these.
    await wait_cache_loaded(DISPATCHER_METRICS_PORT, time.time())
    event = world.event(event_type, BODY)
    await world.produce_event(event)

    await target.wait_for(3)
    rows = await world.wait_attempts("event_id = :e", e=event.event_id, count=3)
    await _settle()
    paths = sorted(r.path for r in target.received())
    assert paths == ["/fan/0", "/fan/1", "/fan/2"]
    assert all(r.body == BODY for r in target.received())
    ids = {r.headers["webhook-id"] for r in target.received()}
    assert ids == {str(delivery_id_for(event.event_id, s)) for s in wanted}
    rows = await world.attempts("event_id = :e", e=event.event_id)
    assert len(rows) == 3
    assert {r["status"] for r in rows} == {"SUCCESS"}
    assert {r["subscription_id"] for r in rows} == set(wanted)


async def test_targeted_event_no_longer_wanted_ends_as_failure_without_a_request(
    world: DispatchWorld, target: TargetServer
) -> None:
    event_type = kind()
    filtered = await world.add_subscription(target.url("/filtered"), event_types=["only.this"])
    inactive = await world.add_subscription(
        target.url("/inactive"), event_types=[event_type], active=False
    )
    e1 = world.event(event_type, BODY, subscription_id=filtered)
    e2 = world.event(event_type, BODY, subscription_id=inactive)
    await world.produce_event(e1)
    await world.produce_event(e2)
    (r1,) = await world.wait_attempts("event_id = :e", e=e1.event_id)
    (r2,) = await world.wait_attempts("event_id = :e", e=e2.event_id)
    assert r1["status"] == r2["status"] == "FAILURE"
    assert r1["status_code"] is None
    assert "no longer accepts event type" in r1["error_details"]
    assert "inactive" in r2["error_details"]
    assert r1["delivery_id"] == delivery_id_for(e1.event_id, filtered)
    await _settle()
    assert target.received() == []


async def test_server_error_writes_failed_attempt_and_a_retry_tier_record(
    world: DispatchWorld, target: TargetServer
) -> None:
    target.reply("/broken", 500, body=b"database is on fire")
    event_type = kind()
    sub = await world.add_subscription(target.url("/broken"), secret="k", event_types=[event_type])
    event = world.event(event_type, BODY, subscription_id=sub)
    before = datetime.now(UTC)
    await world.produce_event(event)
    delivery_id = delivery_id_for(event.event_id, sub)

    (row,) = await world.wait_attempts("delivery_id = :d", d=delivery_id)
    assert row["status"] == "FAILED_ATTEMPT"
    assert row["status_code"] == 500
    assert row["error_details"] == "HTTP 500"
    assert row["response_excerpt"] == "database is on fire"
    (retry,) = await world.read_topic(
        world.topics.retry_topics[0], lambda j: j.delivery_id == delivery_id
    )
    assert retry.attempt == 2
    assert retry.body == BODY
    assert retry.event_id == event.event_id
    assert retry.subscription_id == sub
    assert retry.last_error == "HTTP 500"
    assert retry.due_at is not None
    # Schedule 1s,2s,3s: the first retry waits at least 1 s (jitter only adds).
    assert retry.due_at >= before + timedelta(seconds=1)
    assert retry.due_at <= datetime.now(UTC) + timedelta(seconds=1.5)
    assert retry.first_received_at == event.received_at


async def test_retry_after_on_429_sends_the_retry_to_a_tier_at_least_that_long(
    world: DispatchWorld, target: TargetServer
) -> None:
    target.reply("/busy", 429, headers={"Retry-After": "2"})
    event_type = kind()
    sub = await world.add_subscription(target.url("/busy"), event_types=[event_type])
    event = world.event(event_type, BODY, subscription_id=sub)
    before = datetime.now(UTC)
    await world.produce_event(event)
    delivery_id = delivery_id_for(event.event_id, sub)
    (row,) = await world.wait_attempts("delivery_id = :d", d=delivery_id)
    assert row["status"] == "FAILED_ATTEMPT"
    assert row["status_code"] == 429
    tier_2s = dict(world.topics.retry_tiers)[timedelta(seconds=2)]
    (retry,) = await world.read_topic(tier_2s, lambda j: j.delivery_id == delivery_id)
    assert retry.attempt == 2
    assert retry.due_at is not None
    assert retry.due_at >= before + timedelta(seconds=2)


async def test_last_attempt_failing_ends_as_failure_and_goes_to_the_dlq(
    world: DispatchWorld, target: TargetServer
) -> None:
    target.reply("/dead", 503)
    sub = await world.add_subscription(target.url("/dead"))
    event = world.event(kind(), BODY, subscription_id=sub)
    # The retry scheduler re-publishes attempt 4 (the last, with schedule 1s,2s,3s).
    job = DeliveryJob.for_event(event, sub)
    last = DeliveryJob(
        **{**_fields(job), "attempt": 4, "due_at": datetime.now(UTC), "last_error": "HTTP 503"}
    )
    await world.produce_job(last)
    (row,) = await world.wait_attempts("delivery_id = :d", d=job.delivery_id)
    assert row["status"] == "FAILURE"
    assert row["attempt_number"] == 4
    assert "gave up after attempt 4" in row["error_details"]
    (dead,) = await world.read_topic(world.topics.dlq, lambda j: j.delivery_id == job.delivery_id)
    assert dead.attempt == 4
    assert dead.body == BODY
    assert dead.last_error is not None
    assert "HTTP 503" in dead.last_error


async def test_gone_ends_retries_and_deactivates_the_subscription(
    world: DispatchWorld, target: TargetServer
) -> None:
    target.reply("/gone", 410)
    event_type = kind()
    sub = await world.add_subscription(target.url("/gone"), event_types=[event_type])
    event = world.event(event_type, BODY, subscription_id=sub)
    await world.produce_event(event)
    delivery_id = delivery_id_for(event.event_id, sub)
    (row,) = await world.wait_attempts("delivery_id = :d", d=delivery_id)
    assert row["status"] == "FAILURE"
    assert row["status_code"] == 410
    (dead,) = await world.read_topic(world.topics.dlq, lambda j: j.delivery_id == delivery_id)
    assert dead.last_error is not None
    assert "410" in dead.last_error
    async with _within(10):
        while (await world.subscription(sub))["is_active"]:
            await _tick()
    assert "410" in (await world.subscription(sub))["deactivated_reason"]

    # The next event for it is not sent: the dispatcher's cache saw the change.
    later = world.event(event_type, BODY, subscription_id=sub)
    await world.produce_event(later)
    (skipped,) = await world.wait_attempts("event_id = :e", e=later.event_id)
    assert skipped["status"] == "FAILURE"
    assert "inactive" in skipped["error_details"]
    assert len(target.received("/gone")) == 1


async def test_job_for_a_deleted_subscription_fails_cleanly_and_the_loop_goes_on(
    world: DispatchWorld, target: TargetServer
) -> None:
    sub = await world.add_subscription(target.url("/deleted"))
    await world.delete_subscription(sub)
    ghost = DeliveryJob.for_event(world.event(kind(), BODY), sub)
    await world.produce_job(ghost, partition=0)
    alive = await world.add_subscription(target.url("/alive"))
    job = DeliveryJob.for_event(world.event(kind(), BODY), alive)
    await world.produce_job(job, partition=0)

    await target.wait_for(1, "/alive")
    (row,) = await world.wait_attempts("delivery_id = :d", d=ghost.delivery_id)
    assert row["status"] == "FAILURE"
    assert row["error_details"] == "not delivered: subscription no longer exists"
    assert target.received("/deleted") == []
    rows = await world.scalar(
        "SELECT count(*) FROM delivery_attempts WHERE delivery_id = :d", d=ghost.delivery_id
    )
    assert rows == 1


async def test_poison_records_are_skipped_and_committed(
    world: DispatchWorld, target: TargetServer
) -> None:
    sub = await world.add_subscription(target.url("/after-poison"))
    poison = await world.produce_raw(
        world.topics.deliveries,
        b"{}",
        [("delivery_id", b"not-a-uuid"), ("attempt", b"\xff")],
        key=b"poison",
        partition=1,
    )
    await world.produce_raw(world.topics.events, b"{}", [], key=b"poison", partition=1)
    job = DeliveryJob.for_event(world.event(kind(), BODY), sub)
    good = await world.produce_job(job, partition=1)
    assert good.offset > poison.offset

    await target.wait_for(1, "/after-poison")
    async with _within(10):
        while (await world.committed()).get(_tp(world.topics.deliveries, 1), -1) <= good.offset:
            await _tick()


async def test_redirects_are_not_followed(world: DispatchWorld, target: TargetServer) -> None:
    target.reply("/moved", 302, headers={"Location": target.url("/elsewhere")})
    sub = await world.add_subscription(target.url("/moved"))
    job = DeliveryJob.for_event(world.event(kind(), BODY), sub)
    await world.produce_job(job)
    (row,) = await world.wait_attempts("delivery_id = :d", d=job.delivery_id)
    assert row["status"] == "FAILED_ATTEMPT"
    assert row["status_code"] == 302
    assert "redirects are not followed" in row["error_details"]
    await _settle()
    assert target.received("/elsewhere") == []


async def test_timeout_is_a_failed_attempt(world: DispatchWorld, target: TargetServer) -> None:
    target.reply("/hang", delay=DELIVERY_TIMEOUT + 2)
    sub = await world.add_subscription(target.url("/hang"))
    job = DeliveryJob.for_event(world.event(kind(), BODY), sub)
    await world.produce_job(job)
    (row,) = await world.wait_attempts("delivery_id = :d", d=job.delivery_id)
    assert row["status"] == "FAILED_ATTEMPT"
    assert row["error_details"] == f"timeout after {DELIVERY_TIMEOUT:g}s"
    assert row["status_code"] is None
    assert row["duration_ms"] >= DELIVERY_TIMEOUT * 1000 - 50


async def test_a_slow_early_record_holds_the_commit_point_but_not_later_deliveries(
    world: DispatchWorld, target: TargetServer
) -> None:
    target.reply("/slow", delay=2.0)  # under the 2.5 s timeout, over 20 fast deliveries
    slow_sub = await world.add_subscription(target.url("/slow"))
    fast_sub = await world.add_subscription(target.url("/fast"))
    slow = DeliveryJob.for_event(world.event(kind(), BODY), slow_sub)
    slow_meta = await world.produce_job(slow, partition=2)
    fast_jobs = [DeliveryJob.for_event(world.event(kind(), BODY), fast_sub) for _ in range(20)]
    for job in fast_jobs:
        last_meta = await world.produce_job(job, partition=2)

    # Every later record is delivered while the slow one is still in flight ...
    await target.wait_for(20, "/fast")
    assert len(await world.attempts("delivery_id = :d", d=slow.delivery_id)) == 0
    # ... but the partition's commit point stays at the slow record.
    committed = (await world.committed()).get(_tp(world.topics.deliveries, 2), -1)
    assert committed <= slow_meta.offset
    await world.wait_attempts("delivery_id = :d", d=slow.delivery_id)
    async with _within(10):
        tp = _tp(world.topics.deliveries, 2)
        while (await world.committed()).get(tp, -1) <= last_meta.offset:
            await _tick()


# --- helpers --------------------------------------------------------------------------


def _fields(job: DeliveryJob) -> dict[str, object]:
    return {f: getattr(job, f) for f in DeliveryJob.__dataclass_fields__}


def _tp(topic: str, partition: int) -> TopicPartition:
    return TopicPartition(topic, partition)


def _within(seconds: float) -> asyncio.Timeout:
    return asyncio.timeout(seconds)


async def _tick() -> None:
    await asyncio.sleep(0.1)


async def _settle() -> None:
    """Asserting that something did *not* happen needs a moment for it to have happened."""
    await asyncio.sleep(1.0)


async def test_an_open_circuit_defers_jobs_without_a_request_or_a_used_attempt(
    world: DispatchWorld,
) -> None:
    # Its own server: the breaker is per host:port, so no other test's target trips it.
    async with TargetServer() as down:
        down.reply("/down", 503)
        sub = await world.add_subscription(down.url("/down"))
        first = [DeliveryJob.for_event(world.event(kind(), BODY), sub) for _ in range(5)]
        for job in first:
            await world.produce_job(job)
        # Five failures within a minute open the breaker (shared/breaker.py defaults).
        await world.wait_attempts("subscription_id = :s", s=sub, count=5)
        later = [DeliveryJob.for_event(world.event(kind(), BODY), sub) for _ in range(3)]
        for job in later:
            await world.produce_job(job)
        ids = {j.delivery_id for j in later}
        deferred = await world.read_topic(
            world.topics.retry_topics[0], lambda j: j.delivery_id in ids, count=len(ids)
        )
        assert {j.attempt for j in deferred} == {1}  # no attempt used up
        assert all((j.last_error or "").startswith("circuit open") for j in deferred)
        assert all(j.due_at is not None for j in deferred)
        await _settle()
        assert len(down.received("/down")) == 5
        assert await world.attempts("delivery_id = ANY(:ids)", ids=list(ids)) == []


async def test_a_dead_target_does_not_slow_healthy_ones(
    world: DispatchWorld, target: TargetServer
) -> None:
    async with BlackHole() as hole:
        dead = await world.add_subscription(hole.url())
        alive = await world.add_subscription(target.url("/alive-beside-dead"))
        # Interleaved on one partition: dead, alive, dead, alive …
        jobs = [
            DeliveryJob.for_event(world.event(kind(), BODY), dead if i % 2 == 0 else alive)
            for i in range(300)
        ]
        started = time.monotonic()
        await world.produce_jobs(jobs, partition=3)
        await target.wait_for(150, "/alive-beside-dead", timeout=DELIVERY_TIMEOUT * 2)
        # Every healthy job arrived before the dead target's first requests timed out.
        assert time.monotonic() - started < DELIVERY_TIMEOUT + 1.0
        assert 0 < hole.connections <= 64  # the per-target bound held
