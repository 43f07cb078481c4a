"""Retries end to end (issue 5): dispatcher and retry scheduler as real processes, a real
local HTTP target, schedule 1s, 2s, 3s (so 4 attempts in all).

Black-box: subscriptions are rows in PostgreSQL, events are records on the events topic,
and the evidence is what the target saw, the attempt rows and the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.dispatcher.claims import AttemptClaims
from services.dispatcher.delivery_stage import COPY_DROPPED
from shared.breaker import BreakerState, CircuitBreaker, target_of
from shared.db import make_sessionmaker
from shared.kafka import make_producer
from shared.models import DeliveryAttempt, Subscription
from shared.records import DeliveryJob, EventRecord, delivery_id_for
from shared.redis import make_redis
from shared.settings import Settings
from shared.topics import Topics
from tests.integration.test_retry_scheduler import tier_settings
from tests.support.procs import ServiceProcess, free_port
from tests.support.stack import IsolatedStack
from tests.support.waiting import wait_until

__all__ = ["tier_settings"]  # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.slow

Reply = Callable[[int], web.Response]  # attempt number (1-based) -> response


@dataclass
class Target:
    """A local HTTP endpoint per path, each with its own script of answers."""

    replies: dict[str, Reply] = field(default_factory=dict)
    seen: dict[str, list[tuple[float, bytes, dict[str, str]]]] = field(default_factory=dict)
    base: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        calls = self.seen.setdefault(request.path, [])
        calls.append((time.time(), await request.read(), dict(request.headers)))
        return self.replies[request.path](len(calls))


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    t = Target()
    app = web.Application()
    app.router.add_post("/{name}", t.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    t.base = f"http://127.0.0.1:{port}"
    yield t
    await runner.cleanup()


@pytest.fixture
async def services(
    stack: IsolatedStack, tier_settings: Settings, tmp_path: Path
) -> AsyncIterator[list[ServiceProcess]]:
    env = {"HOOKSTREAM_TOPIC_PREFIX": tier_settings.topic_prefix}
    procs = [
        ServiceProcess(stack, "dispatcher", log_dir=tmp_path, **env),
        ServiceProcess(stack, "retry_scheduler", log_dir=tmp_path, **env),
    ]
    yield procs
    codes = {p.name: p.stop() for p in procs}
    assert codes == {"dispatcher": 0, "retry_scheduler": 0}, {
        p.name: p.log()[-3000:] for p in procs
    }


async def subscribe(engine: AsyncEngine, url: str) -> uuid.UUID:
    sub_id = uuid.uuid4()
    async with make_sessionmaker(engine).begin() as session:
        session.add(Subscription(id=sub_id, target_url=url, secret_key=None, event_types=[]))
    return sub_id


def make_event(subscription_id: uuid.UUID, body: bytes) -> EventRecord:
    return EventRecord(
        event_id=uuid.uuid4(),
        event_type="invoice.paid",
        received_at=datetime.now(UTC),
        content_type="application/json",
        body=body,
        subscription_id=subscription_id,
    )


async def publish(settings: Settings, topic: str, records: list[tuple[bytes, bytes, Any]]) -> None:
    """(key, value, headers) records, acknowledged by the broker, in this order."""
    producer = make_producer(settings)
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


async def send_event(settings: Settings, subscription_id: uuid.UUID, body: bytes) -> uuid.UUID:
    event = make_event(subscription_id, body)
    record = (event.key, body, event.headers())
    await publish(settings, Topics.from_settings(settings).events, [record])
    return delivery_id_for(event.event_id, subscription_id)


async def send_retry_copies(
    settings: Settings, subscription_id: uuid.UUID, attempt: int, copies: int
) -> DeliveryJob:
    """``copies`` identical records of one retry job on the deliveries topic, as a retry
    scheduler killed before its commit re-publishes them."""
    job = DeliveryJob.for_event(make_event(subscription_id, b'{"n": 4}'), subscription_id)
    job = dataclasses.replace(job, attempt=attempt, due_at=datetime.now(UTC), last_error="HTTP 500")
    await send_job_copies(settings, job, copies)
    return job


async def send_job_copies(settings: Settings, job: DeliveryJob, copies: int) -> None:
    record = (job.key, job.body, job.headers())
    await publish(settings, Topics.from_settings(settings).deliveries, [record] * copies)


async def copies_dropped(procs: list[ServiceProcess], delivery_id: uuid.UUID, count: int) -> None:
    """Wait until the dispatcher has logged ``count`` dropped copies of the delivery."""
    dispatcher = next(p for p in procs if p.name == "dispatcher")
    ours = f'"delivery_id": "{delivery_id}"'

    def dropped() -> int:
        lines = dispatcher.log().splitlines()
        return sum(1 for line in lines if COPY_DROPPED in line and ours in line)

    await wait_until(
        lambda: dropped() >= count, timeout=30, what=f"{count} dropped copies of {delivery_id}"
    )


async def attempts_until_terminal(
    engine: AsyncEngine, delivery_id: uuid.UUID, procs: list[ServiceProcess], timeout: float
) -> list[DeliveryAttempt]:
    sessions = make_sessionmaker(engine)
    deadline = time.monotonic() + timeout
    while True:
        async with sessions() as session:
            rows = list(
                (
                    await session.execute(
                        select(DeliveryAttempt)
                        .where(DeliveryAttempt.delivery_id == delivery_id)
                        .order_by(DeliveryAttempt.attempt_number, DeliveryAttempt.created_at)
                    )
                ).scalars()
            )
        if rows and rows[-1].status in {"SUCCESS", "FAILURE"}:
            return rows
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in procs)
            raise AssertionError(f"no terminal attempt after {timeout}s: {rows}\n{logs}")
        await asyncio.sleep(0.2)


def gaps(calls: list[tuple[float, bytes, dict[str, str]]]) -> list[float]:
    return [b[0] - a[0] for a, b in itertools.pairwise(calls)]


async def dead_letters(settings: Settings, delivery_id: uuid.UUID) -> int:
    topic = Topics.from_settings(settings).dlq
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.dlq_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found = 0
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found += sum(
                    1
                    for r in records
                    if dict(r.headers)["delivery_id"] == str(delivery_id).encode()
                )
        return found
    finally:
        await consumer.stop()


async def test_fails_twice_then_succeeds_in_exactly_three_attempts(
    tier_settings: Settings, engine: AsyncEngine, target: Target, services: list[ServiceProcess]
) -> None:
    target.replies["/flaky"] = lambda n: web.Response(status=503 if n <= 2 else 200)
    sub_id = await subscribe(engine, f"{target.base}/flaky")
    body = b'{"amount":  42, "currency": "EUR"}'
    delivery_id = await send_event(tier_settings, sub_id, body)
    rows = await attempts_until_terminal(engine, delivery_id, services, timeout=60)
    assert [(r.attempt_number, r.status) for r in rows] == [
        (1, "FAILED_ATTEMPT"),
        (2, "FAILED_ATTEMPT"),
        (3, "SUCCESS"),
    ]
    calls = target.seen["/flaky"]
    assert len(calls) == 3
    # Never early: jitter only lengthens the 1 s and 2 s delays.
    first_gap, second_gap = gaps(calls)
    assert first_gap >= 1.0
    assert second_gap >= 2.0
    assert all(c[1] == body for c in calls), "the body must arrive byte for byte"
    assert {c[2]["webhook-id"] for c in calls} == {str(delivery_id)}


async def test_always_failing_ends_in_failure_and_one_dead_letter(
    tier_settings: Settings, engine: AsyncEngine, target: Target, services: list[ServiceProcess]
) -> None:
    target.replies["/dead"] = lambda n: web.Response(status=500)
    sub_id = await subscribe(engine, f"{target.base}/dead")
    delivery_id = await send_event(tier_settings, sub_id, b'{"n": 1}')
    rows = await attempts_until_terminal(engine, delivery_id, services, timeout=60)
    assert [(r.attempt_number, r.status) for r in rows] == [
        (1, "FAILED_ATTEMPT"),
        (2, "FAILED_ATTEMPT"),
        (3, "FAILED_ATTEMPT"),
        (4, "FAILURE"),
    ]
    calls = target.seen["/dead"]
    assert len(calls) == 4
    for gap, delay in zip(gaps(calls), (1.0, 2.0, 3.0), strict=True):
        assert gap >= delay
    await asyncio.sleep(1.0)  # nothing more comes
    assert len(target.seen["/dead"]) == 4
    assert await dead_letters(tier_settings, delivery_id) == 1


async def test_retry_after_lengthens_the_next_delay(
    tier_settings: Settings, engine: AsyncEngine, target: Target, services: list[ServiceProcess]
) -> None:
    # The schedule says 1 s after the first attempt; the target asks for 3 s.
    target.replies["/busy"] = lambda n: (
        web.Response(status=429, headers={"Retry-After": "3"}) if n == 1 else web.Response()
    )
    sub_id = await subscribe(engine, f"{target.base}/busy")
    delivery_id = await send_event(tier_settings, sub_id, b'{"n": 2}')
    rows = await attempts_until_terminal(engine, delivery_id, services, timeout=60)
    assert [(r.attempt_number, r.status, r.status_code) for r in rows] == [
        (1, "FAILED_ATTEMPT", 429),
        (2, "SUCCESS", 200),
    ]
    (gap,) = gaps(target.seen["/busy"])
    assert gap >= 3.0


async def test_gone_on_a_retry_stops_at_once_and_deactivates(
    tier_settings: Settings, engine: AsyncEngine, target: Target, services: list[ServiceProcess]
) -> None:
    target.replies["/moved"] = lambda n: web.Response(status=503 if n == 1 else 410)
    sub_id = await subscribe(engine, f"{target.base}/moved")
    delivery_id = await send_event(tier_settings, sub_id, b'{"n": 3}')
    rows = await attempts_until_terminal(engine, delivery_id, services, timeout=60)
    assert [(r.attempt_number, r.status, r.status_code) for r in rows] == [
        (1, "FAILED_ATTEMPT", 503),
        (2, "FAILURE", 410),
    ]
    await asyncio.sleep(2.5)  # the 2 s tier would have fired by now
    assert len(target.seen["/moved"]) == 2
    async with make_sessionmaker(engine)() as session:
        sub = await session.get(Subscription, sub_id)
    assert sub is not None
    assert sub.is_active is False
    assert sub.deactivated_reason
    assert await dead_letters(tier_settings, delivery_id) == 1


async def test_an_overdue_copy_with_its_target_closed_to_it_does_not_end_its_delivery_again(
    tier_settings: Settings, engine: AsyncEngine, services: list[ServiceProcess]
) -> None:
    """Past its deadline, a job whose target's breaker is open counts the deferral as a
    failed attempt (the last one ends in FAILURE). A copy of a delivery that ended
    meanwhile must be dropped instead: the fault suite's scheduler kill once left one
    delivery both delivered and FAILURE that way."""
    url = f"http://127.0.0.1:{free_port()}/closed"  # the breaker keeps requests from it
    sub_id = await subscribe(engine, url)
    job = DeliveryJob.for_event(make_event(sub_id, b'{"n": 5}'), sub_id)
    job = dataclasses.replace(
        job,
        attempt=3,
        first_received_at=datetime.now(UTC) - timedelta(days=3),  # long past its deadline
        due_at=datetime.now(UTC),
        last_error="HTTP 500",
    )
    redis = make_redis(tier_settings)
    try:
        breaker = CircuitBreaker(redis, tier_settings.topic_prefix)
        for _ in range(breaker.config.failure_threshold):
            await breaker.record(target_of(url), ok=False)
        assert breaker.state(target_of(url)) is BreakerState.OPEN
        # The other chain's success ended the delivery.
        await AttemptClaims(redis, tier_settings.topic_prefix, ttl=600).end(
            job.delivery_id, job.run
        )
    finally:
        await redis.aclose()
    await send_job_copies(tier_settings, job, 1)
    await copies_dropped(services, job.delivery_id, 1)
    async with make_sessionmaker(engine)() as session:
        rows = (
            await session.execute(
                select(DeliveryAttempt).where(DeliveryAttempt.delivery_id == job.delivery_id)
            )
        ).all()
    assert rows == []


async def test_copies_of_a_retry_make_one_chain_and_a_copy_after_the_end_is_dropped(
    tier_settings: Settings, engine: AsyncEngine, target: Target, services: list[ServiceProcess]
) -> None:
    # Two chains of one delivery could end one in FAILURE and one in SUCCESS: the copy
    # of attempt 2 must not make a request of its own.
    target.replies["/copied"] = lambda n: web.Response(status=500 if n <= 2 else 200)
    sub_id = await subscribe(engine, f"{target.base}/copied")
    job = await send_retry_copies(tier_settings, sub_id, attempt=2, copies=2)
    await copies_dropped(services, job.delivery_id, 1)
    rows = await attempts_until_terminal(engine, job.delivery_id, services, timeout=60)
    assert [(r.attempt_number, r.status) for r in rows] == [
        (2, "FAILED_ATTEMPT"),
        (3, "FAILED_ATTEMPT"),
        (4, "SUCCESS"),
    ]
    assert len(target.seen["/copied"]) == 3
    # A copy of attempt 3 still on a tier when the delivery ended: dropped unsent.
    await send_job_copies(tier_settings, job.next_attempt(datetime.now(UTC), "HTTP 500"), 1)
    await copies_dropped(services, job.delivery_id, 2)
    assert len(target.seen["/copied"]) == 3
    # Another run (a manual retry's) of the ended delivery is no copy: its retry goes.
    rerun = dataclasses.replace(job, trigger="manual-retry", run="rerun")
    await send_job_copies(tier_settings, rerun, 1)
    await wait_until(
        lambda: len(target.seen["/copied"]) == 4, timeout=30, what="the other run's attempt"
    )
