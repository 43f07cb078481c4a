"""The retry scheduler against real Kafka, in process: due times, isolation, membership.

Every test gets its own topic prefix (its own tier topics, deliveries topic and consumer
group), so a record left paused by one test cannot hold a partition in the next.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaTimeoutError

from services.retry_scheduler.scheduler import RetryScheduler, group_id, run
from services.retry_scheduler.settings import SchedulerSettings
from shared.kafka import admin_client, make_consumer, make_producer
from shared.records import DeliveryJob
from shared.settings import Settings
from shared.topics import Topics, ensure_topics
from tests.support.stack import IsolatedStack, drop_topics

# --- helpers (also used by test_retry_scheduler_process.py) -------------------------------


@pytest.fixture
async def tier_settings(stack: IsolatedStack) -> AsyncIterator[Settings]:
    """Settings with a topic prefix of this test's own, its topics created."""
    prefix = f"{stack.env['HOOKSTREAM_TOPIC_PREFIX']}-rs{secrets.token_hex(3)}"
    settings = stack.settings(topic_prefix=prefix)
    await ensure_topics(settings)
    yield settings
    await drop_topics(settings.kafka_bootstrap, prefix)


def make_job(due_at: float | None, *, attempt: int = 2) -> DeliveryJob:
    return DeliveryJob(
        delivery_id=uuid.uuid4(),
        event_id=uuid.uuid4(),
        subscription_id=uuid.uuid4(),
        event_type="order.paid",
        attempt=attempt,
        first_received_at=datetime.now(UTC),
        content_type="application/json",
        # Odd spacing and key order: re-serialising would change these bytes.
        body=b'{"z": 1,   "a": [true, null],"n": "' + secrets.token_hex(8).encode() + b'"}',
        due_at=datetime.fromtimestamp(due_at, UTC) if due_at is not None else None,
        last_error="HTTP 503",
        extra={"x-test-extra": secrets.token_bytes(6)},
    )


@dataclass(frozen=True, slots=True)
class Sent:
    job: DeliveryJob
    topic: str
    partition: int
    offset: int
    headers: tuple[tuple[str, bytes], ...]

    @property
    def due_at(self) -> float:
        assert self.job.due_at is not None
        return self.job.due_at.timestamp()


async def produce(settings: Settings, items: Sequence[tuple[str, int, DeliveryJob]]) -> list[Sent]:
    """Write jobs to (tier topic, partition) in the order given."""
    producer = make_producer(settings)
    await producer.start()
    sent = []
    try:
        for topic, partition, job in items:
            headers = job.headers()
            meta = await producer.send_and_wait(
                topic, job.body, key=job.key, partition=partition, headers=headers
            )
            sent.append(Sent(job, topic, partition, meta.offset, tuple(headers)))
    finally:
        await producer.stop()
    return sent


@dataclass(frozen=True, slots=True)
class Received:
    received_at: float  # wall clock when this test's consumer got it
    timestamp_ms: int  # the record's timestamp on the deliveries topic
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @property
    def delivery_id(self) -> str:
        return dict(self.headers)["delivery_id"].decode()


class DeliveriesReader:
    """Reads the deliveries topic from the beginning, outside any consumer group."""

    def __init__(self, settings: Settings) -> None:
        self._topic = Topics.from_settings(settings).deliveries
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
        )
        self._partitions = settings.deliveries_partitions
        self.records: list[Received] = []

    async def __aenter__(self) -> DeliveriesReader:
        await self._consumer.start()
        tps = [TopicPartition(self._topic, p) for p in range(self._partitions)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._consumer.stop()

    async def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            batches = await self._consumer.getmany(timeout_ms=max(1, int(left * 1000)))
            now = time.time()
            for records in batches.values():
                self.records.extend(
                    Received(now, r.timestamp, r.key, r.value, tuple(r.headers)) for r in records
                )

    async def until_ids(self, ids: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ids <= {r.delivery_id for r in self.records}:
            if time.monotonic() > deadline:
                missing = ids - {r.delivery_id for r in self.records}
                raise AssertionError(f"{len(missing)} of {len(ids)} retries never arrived")
            await self.poll(0.2)

    def by_id(self) -> dict[str, list[Received]]:
        out: dict[str, list[Received]] = {}
        for record in self.records:
            out.setdefault(record.delivery_id, []).append(record)
        return out


def assert_on_time_and_unchanged(sent: Sent, got: Received) -> None:
    assert got.received_at >= sent.due_at, f"received {sent.due_at - got.received_at:.3f}s early"
    # The producer stamps whole milliseconds; one stamped at or after due_at is never below
    # floor(due_at in ms).
    assert got.timestamp_ms >= math.floor(sent.due_at * 1000), "published before due_at"
    assert got.key == sent.job.key
    assert got.value == sent.job.body
    assert got.headers == sent.headers


@asynccontextmanager
async def scheduler_task(
    settings: Settings, **config: object
) -> AsyncIterator[asyncio.Task[RetryScheduler]]:
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop, SchedulerSettings(**config)))  # type: ignore[arg-type]
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def committed(settings: Settings) -> dict[TopicPartition, int]:
    async with admin_client(settings.kafka_bootstrap) as admin:
        offsets = await admin.list_consumer_group_offsets(group_id(settings))
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


# --- tests --------------------------------------------------------------------------------


async def test_due_records_are_republished_unchanged_never_early(tier_settings: Settings) -> None:
    topics = Topics.from_settings(tier_settings)
    t1, t2, t3 = topics.retry_topics  # 1s, 2s, 3s in the test environment
    now = time.time()
    items = [
        (t1, 0, make_job(now - 5)),  # overdue: goes at once
        (t1, 0, make_job(now + 1.0)),
        (t1, 0, make_job(now + 1.2)),
        (t1, 1, make_job(now + 1.1)),
        (t2, 0, make_job(now + 2.0, attempt=3)),
        (t2, 1, make_job(now + 2.3, attempt=3)),
        (t3, 1, make_job(now + 3.0, attempt=4)),
    ]
    sent = await produce(tier_settings, items)
    async with DeliveriesReader(tier_settings) as reader, scheduler_task(tier_settings) as task:
        await reader.until_ids({str(s.job.delivery_id) for s in sent}, timeout=30)
        assert not task.done()
    got = reader.by_id()
    for s in sent:
        (only,) = got[str(s.job.delivery_id)]
        assert_on_time_and_unchanged(s, only)
    # The graceful stop committed every partition past its last record.
    ends: dict[TopicPartition, int] = {}
    for s in sent:
        tp = TopicPartition(s.topic, s.partition)
        ends[tp] = max(ends.get(tp, 0), s.offset + 1)
    offsets = await committed(tier_settings)
    assert {tp: offsets.get(tp) for tp in ends} == ends


async def test_a_partition_not_due_does_not_block_the_others(tier_settings: Settings) -> None:
    t1 = Topics.from_settings(tier_settings).retry_topics[0]
    now = time.time()
    far, behind_far, due = await produce(
        tier_settings,
        [
            (t1, 0, make_job(now + 3600)),
            # Due, but behind a record that is not: within a partition offset order rules.
            (t1, 0, make_job(now)),
            (t1, 1, make_job(now + 1.0)),
        ],
    )
    async with DeliveriesReader(tier_settings) as reader, scheduler_task(tier_settings):
        await reader.until_ids({str(due.job.delivery_id)}, timeout=20)
        await reader.poll(1.5)  # the paused partition stays paused
    got = reader.by_id()
    assert set(got) == {str(due.job.delivery_id)}
    assert_on_time_and_unchanged(due, got[str(due.job.delivery_id)][0])
    offsets = await committed(tier_settings)
    # Nothing of partition 0 was committed: a restart starts again at the far record.
    assert offsets.get(TopicPartition(t1, 0), far.offset) == far.offset
    assert offsets[TopicPartition(t1, 1)] == due.offset + 1
    assert behind_far.offset == far.offset + 1


async def test_membership_survives_waits_longer_than_max_poll_interval(
    tier_settings: Settings,
) -> None:
    t1, t2, _ = Topics.from_settings(tier_settings).retry_topics
    now = time.time()
    # Everything paused for 4-5 s against a 1 s max_poll_interval: a loop that slept on the
    # head record would be evicted (and rebalanced) several times over.
    sent = await produce(tier_settings, [(t1, 0, make_job(now + 4)), (t2, 1, make_job(now + 5))])
    async with (
        DeliveriesReader(tier_settings) as reader,
        scheduler_task(tier_settings, max_poll_interval_ms=1000) as task,
    ):
        await reader.until_ids({str(s.job.delivery_id) for s in sent}, timeout=30)
    scheduler = task.result()
    assert scheduler.assignments == 1, "the member was evicted and rejoined"
    got = reader.by_id()
    for s in sent:
        assert_on_time_and_unchanged(s, got[str(s.job.delivery_id)][0])


async def test_poison_records_are_skipped_and_committed(tier_settings: Settings) -> None:
    t1 = Topics.from_settings(tier_settings).retry_topics[0]
    producer = make_producer(tier_settings)
    await producer.start()
    try:
        poison = await producer.send_and_wait(
            t1, b"{}", key=b"k", partition=0, headers=[("attempt", b"two")]
        )
    finally:
        await producer.stop()
    (good,) = await produce(tier_settings, [(t1, 0, make_job(time.time() + 1))])
    async with DeliveriesReader(tier_settings) as reader, scheduler_task(tier_settings):
        await reader.until_ids({str(good.job.delivery_id)}, timeout=20)
    assert [r.delivery_id for r in reader.records] == [str(good.job.delivery_id)]
    assert good.offset == poison.offset + 1
    assert (await committed(tier_settings))[TopicPartition(t1, 0)] == good.offset + 1


async def test_a_second_member_takes_partitions_without_loss_or_early_fire(
    tier_settings: Settings,
) -> None:
    topics = Topics.from_settings(tier_settings)
    now = time.time()
    items = [
        (topic, partition, make_job(now + 1 + 0.25 * i))
        for i in range(12)
        for topic in topics.retry_topics
        for partition in (0, 1)
    ]
    sent = await produce(tier_settings, items)
    async with DeliveriesReader(tier_settings) as reader, scheduler_task(tier_settings) as first:
        # Join a second member mid-way: every partition is revoked and reassigned, paused
        # ones included, while publishes are in flight.
        await asyncio.sleep(max(0.0, now + 2.2 - time.time()))
        async with scheduler_task(tier_settings) as second:
            await reader.until_ids({str(s.job.delivery_id) for s in sent}, timeout=40)
        assert second.result().assignments >= 1
        assert not first.done()
    got = reader.by_id()
    duplicates = sum(len(v) - 1 for v in got.values())
    print(f"rebalance: {len(sent)} retries, {duplicates} duplicates")
    for s in sent:
        for copy in got[str(s.job.delivery_id)]:
            assert_on_time_and_unchanged(s, copy)


class FlakyProducer:
    """The real producer, except that the first ``failures`` acks fail (a broker timeout)."""

    def __init__(self, real, failures: int) -> None:  # type: ignore[no-untyped-def]
        self._real = real
        self.failures = failures

    async def send(self, topic, value, *, key, headers):  # type: ignore[no-untyped-def]
        if self.failures > 0:
            self.failures -= 1
            ack = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(0.05, ack.set_exception, KafkaTimeoutError())
            return ack
        return await self._real.send(topic, value, key=key, headers=headers)


async def test_a_failed_publish_rewinds_the_partition_and_retries(tier_settings: Settings) -> None:
    topics = Topics.from_settings(tier_settings)
    t1 = topics.retry_topics[0]
    now = time.time()
    sent = await produce(tier_settings, [(t1, 0, make_job(now + 0.5 + 0.1 * i)) for i in range(5)])
    producer = make_producer(tier_settings)
    await producer.start()
    consumer = make_consumer(tier_settings, group_id=group_id(tier_settings))
    scheduler = RetryScheduler(
        consumer,
        FlakyProducer(producer, failures=2),  # type: ignore[arg-type]
        topics,
        SchedulerSettings(publish_retry_backoff=0.3),
    )
    consumer.subscribe(topics.retry_topics, listener=scheduler.listener)
    await consumer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    try:
        async with DeliveriesReader(tier_settings) as reader:
            await reader.until_ids({str(s.job.delivery_id) for s in sent}, timeout=20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await consumer.stop()
        await producer.stop()
    got = reader.by_id()
    for s in sent:
        for copy in got[str(s.job.delivery_id)]:
            assert_on_time_and_unchanged(s, copy)
    assert (await committed(tier_settings))[TopicPartition(t1, 0)] == sent[-1].offset + 1
