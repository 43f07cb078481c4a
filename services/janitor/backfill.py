"""Backfills: a window of the events topic re-delivered to one subscription (design §12).

``POST /subscriptions/{id}/backfill`` writes a ``backfills`` row (status ``running``);
this worker, inside the janitor process, claims it and reads the events topic from the
offsets for ``since`` to the end offsets taken when it started, with a consumer of its own
(no group, partitions assigned by hand: it never moves the dispatcher's offsets). Every
event the subscription takes (``shared.matching.takes``, the same decision fan-out makes)
becomes a delivery job with trigger ``backfill`` on the deliveries topic, keyed by
subscription id with ``delivery_id = uuid5(event_id, subscription_id)``: from there the
dispatcher's retries, DLQ and attempt rows follow as for any job. A delivery that already
has a SUCCESS attempt is skipped, so backfilling a window twice sends nothing new.

Why the janitor: it is a process of its own, off the hot path. Reading and matching tens
of thousands of events a second costs CPU; in the dispatcher it would run on the event
loop whose lag bounds live deliveries in flight (dispatcher/limits.py). What a backfill
adds to live traffic is bounded by ``backfill_max_rate`` jobs/s and
``backfill_max_scan_rate`` events/s per process.

Several janitors may run: a backfill is claimed with a lease (``owner``, ``lease_until``)
renewed every ``SAVE_EVERY`` with its progress (counters and per-partition positions,
advanced only past records whose jobs the broker acknowledged). A worker that stops
releases its claims; one that crashed loses them when the lease lapses, and whoever claims
next resumes from the saved positions towards the same end offsets. Cancellation
(``DELETE /backfills/{id}``) is seen at the next save.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import make_engine, make_sessionmaker
from shared.eventlog import history_reader, window_ms, window_offsets
from shared.kafka import make_producer
from shared.logging import get_logger
from shared.matching import Payload, takes
from shared.models import DEFAULT_APPLICATION_ID, Subscription
from shared.records import BACKFILL_TRIGGER, TEST_TRIGGER, DeliveryJob, EventRecord, RecordError
from shared.settings import Settings
from shared.subscriptions import SubscriptionView
from shared.topics import Topics

log = get_logger("janitor.backfill")

# Progress saved, cancellation seen and the lease renewed this often: a DELETE stops a
# backfill within about this much (plus one publish in flight).
SAVE_EVERY = 0.5
# A claim lapses this long after its last save: a crashed worker's backfill resumes
# elsewhere after at most this, while a live one renews it 60 times over.
LEASE = timedelta(seconds=30)
# Seconds between looks for backfills to run (one indexed query on a small table).
POLL_EVERY = 1.0
# Records handled per step: their jobs are published and acknowledged, then the position
# moves past them. Small enough that a resumed backfill repeats little.
STEP = 500
# Records per fetch: a fetch of small events is a few MB.
FETCH_RECORDS = 5_000
# A worker stopping finishes its current step and releases its claims within this.
STOP_DEADLINE = 5.0
# Attempt rows are created after their event was received: looking no further back than
# this before ``since`` lets PostgreSQL skip older attempt partitions.
ATTEMPT_SLACK = timedelta(hours=1)

_CLAIM = text(
    """
    UPDATE backfills SET owner = :owner, lease_until = now() + :lease, updated_at = now()
    WHERE id = (
        SELECT id FROM backfills
        WHERE status = 'running' AND (lease_until IS NULL OR lease_until < now())
        ORDER BY created_at
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id, subscription_id, application_id, since, until, scanned, matched,
        published, positions, end_offsets
    """
)
_SAVE = text(
    """
    UPDATE backfills
    SET scanned = :scanned, matched = :matched, published = :published,
        positions = CAST(:positions AS jsonb), end_offsets = CAST(:stops AS jsonb),
        lease_until = now() + :lease, updated_at = now()
    WHERE id = :id AND owner = :owner
    RETURNING status
    """
)
_FINISH = text(
    """
    UPDATE backfills
    SET status = :status, error = :error, scanned = :scanned, matched = :matched,
        published = :published, positions = CAST(:positions AS jsonb),
        finished_at = now(), updated_at = now(), owner = NULL, lease_until = NULL
    WHERE id = :id AND owner = :owner AND status = 'running'
    """
)
_RELEASE = text(
    """
    UPDATE backfills
    SET scanned = :scanned, matched = :matched, published = :published,
        positions = CAST(:positions AS jsonb), updated_at = now(),
        owner = NULL, lease_until = NULL
    WHERE id = :id AND owner = :owner
    """
)
# ix_attempts_delivery serves it: one index probe per id and attempt partition.
_SUCCEEDED = text(
    """
    SELECT DISTINCT delivery_id FROM delivery_attempts
    WHERE delivery_id = ANY(CAST(:ids AS uuid[])) AND status = 'SUCCESS'
        AND created_at >= :floor
    """
)


class RateLimit:
    """A token bucket: ``take(n)`` waits until n more may go at ``rate`` per second.
    One per process, shared by its backfills, so the bound holds for all of them."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self._rate = rate
        self._burst = burst if burst is not None else max(1.0, rate / 10)
        self._tokens = self._burst
        self._at = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        """Takes n at once, then waits until the debt is paid back: the average stays at
        ``rate`` while a step of a few hundred goes out in one batch."""
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
            self._at = now
            self._tokens -= n
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self._rate)


@dataclass(slots=True)
class Claimed:
    """A backfill this worker holds, and how far it got."""

    id: uuid.UUID
    subscription_id: uuid.UUID
    application_id: uuid.UUID
    since: datetime
    until: datetime
    scanned: int = 0
    matched: int = 0
    published: int = 0
    positions: dict[int, int] | None = None
    stops: dict[int, int] | None = None
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, row: Any) -> Claimed:
        return cls(
            id=row.id,
            subscription_id=row.subscription_id,
            application_id=row.application_id,
            since=row.since,
            until=row.until,
            scanned=row.scanned,
            matched=row.matched,
            published=row.published,
            positions=_partitions(row.positions),
            stops=_partitions(row.end_offsets),
        )

    def params(self, owner: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner": owner,
            "scanned": self.scanned,
            "matched": self.matched,
            "published": self.published,
            "positions": _json(self.positions),
            "stops": _json(self.stops),
            "lease": LEASE,
        }

    def log_fields(self) -> dict[str, Any]:
        return {
            "backfill_id": str(self.id),
            "subscription_id": str(self.subscription_id),
            "application_id": str(self.application_id),
            "scanned": self.scanned,
            "matched": self.matched,
            "published": self.published,
        }


def _partitions(value: dict[str, int] | None) -> dict[int, int] | None:
    return None if value is None else {int(p): int(o) for p, o in value.items()}


def _json(value: dict[int, int] | None) -> str | None:
    return None if value is None else orjson.dumps({str(p): o for p, o in value.items()}).decode()


class SubscriptionGone(Exception):
    """The subscription was deleted or deactivated while its backfill ran."""


@dataclass(slots=True)
class Backfill:
    """One claimed backfill: scans its window and publishes what the subscription takes."""

    job: Claimed
    sub: SubscriptionView
    engine: AsyncEngine
    producer: AIOKafkaProducer
    topics: Topics
    publish_rate: RateLimit
    scan_rate: RateLimit
    # Quick refusals before a record's headers are decoded (most records of a shared
    # topic belong to other applications); ``takes`` still decides for the rest.
    _app: bytes = field(init=False)
    _sub: bytes = field(init=False)
    _types: frozenset[bytes] = field(init=False)
    _since_ms: int = field(init=False)
    _until_ms: int = field(init=False)

    def __post_init__(self) -> None:
        self._app = str(self.job.application_id).encode()
        self._sub = str(self.job.subscription_id).encode()
        self._types = frozenset(t.encode() for t in self.sub.event_types)
        self._since_ms, self._until_ms = window_ms(self.job.since, self.job.until)

    def follow(self, sub: SubscriptionView) -> None:
        """The subscription as it is now: a change to its types or filter applies to the
        rest of the window."""
        self.sub = sub
        self._types = frozenset(t.encode() for t in sub.event_types)

    async def scan(self, consumer: AIOKafkaConsumer) -> None:
        """Read every partition from its position to its stop offset."""
        positions, stops = self.job.positions, self.job.stops
        assert positions is not None
        assert stops is not None
        topic = self.topics.events
        remaining = [
            TopicPartition(topic, p) for p in sorted(positions) if positions[p] < stops.get(p, 0)
        ]
        if not remaining:
            return
        consumer.assign(remaining)
        for tp in remaining:
            consumer.seek(tp, positions[tp.partition])
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=FETCH_RECORDS)
            for tp, records in batches.items():
                await self._partition_step(tp, records, positions, stops[tp.partition])
            for tp in list(remaining):
                stop = stops[tp.partition]
                if tp not in batches:
                    # Nothing buffered: the consumer's position is past every record it
                    # returned and past offsets that hold none (a gap the broker skipped).
                    # With records buffered it is past them too, so only now.
                    fetched = min(stop, await consumer.position(tp))
                    positions[tp.partition] = max(positions[tp.partition], fetched)
                if positions[tp.partition] >= stop:
                    remaining.remove(tp)
                    consumer.pause(tp)

    async def _partition_step(
        self,
        tp: TopicPartition,
        records: Sequence[ConsumerRecord[bytes, bytes]],
        positions: dict[int, int],
        stop: int,
    ) -> None:
        for start in range(0, len(records), STEP):
            chunk = records[start : start + STEP]
            step = [r for r in chunk if r.offset < stop]
            if step:
                await self.scan_rate.take(len(step))
                jobs = [job for r in step if (job := self._job_for(r)) is not None]
                published = await self._publish(jobs)
                # Only now, with the jobs acknowledged, does the position move past them.
                self.job.scanned += len(step)
                self.job.matched += len(jobs)
                self.job.published += published
                positions[tp.partition] = step[-1].offset + 1
            if len(step) < len(chunk):
                positions[tp.partition] = stop
                return

    def _job_for(self, record: ConsumerRecord[bytes, bytes]) -> DeliveryJob | None:
        if not self._since_ms <= record.timestamp <= self._until_ms:
            return None
        headers = dict(record.headers)
        if headers.get("application_id", _DEFAULT_APP) != self._app:
            return None
        if headers.get("subscription_id", self._sub) != self._sub:
            return None
        if self._types and headers.get("event_type") not in self._types:
            return None  # a test event of another type too: none is replayed
        try:
            event = EventRecord.decode(record.value, record.headers)
        except RecordError:
            return None  # fan-out dead-letters it; there is nothing here to deliver
        # A test event was an example sent once, not history to replay.
        if event.trigger == TEST_TRIGGER or not takes(self.sub, event, Payload(event.body)):
            return None
        # One run per backfill: a record it publishes twice (a crash) is the same run.
        return replace(
            DeliveryJob.for_event(event, self.sub.id),
            trigger=BACKFILL_TRIGGER,
            run=f"backfill-{self.job.id}",
        )

    async def _publish(self, jobs: list[DeliveryJob]) -> int:
        """Publish the jobs whose delivery has not succeeded yet; returns how many."""
        if not jobs:
            return 0
        done = await self._succeeded([j.delivery_id for j in jobs])
        fresh = [j for j in jobs if j.delivery_id not in done]
        if not fresh:
            return 0
        await self.publish_rate.take(len(fresh))
        acks = [
            await self.producer.send(self.topics.deliveries, j.body, key=j.key, headers=j.headers())
            for j in fresh
        ]
        await asyncio.gather(*acks)
        return len(fresh)

    async def _succeeded(self, ids: list[uuid.UUID]) -> set[uuid.UUID]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                _SUCCEEDED, {"ids": ids, "floor": self.job.since - ATTEMPT_SLACK}
            )
            return {row[0] for row in rows}


_DEFAULT_APP = str(DEFAULT_APPLICATION_ID).encode()


class BackfillWorker:
    """Claims running backfills and runs up to ``backfill_concurrency`` at once."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        producer: AIOKafkaProducer,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._sessions = make_sessionmaker(engine)
        self._producer = producer
        self._topics = Topics.from_settings(settings)
        self._publish_rate = RateLimit(settings.backfill_max_rate)
        self._scan_rate = RateLimit(
            settings.backfill_max_scan_rate, burst=max(STEP, settings.backfill_max_scan_rate / 10)
        )
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: claim what is waiting, run it; then release what is held."""
        try:
            while not stop.is_set():
                try:
                    while len(self._tasks) < self._settings.backfill_concurrency and (
                        claimed := await self._claim()
                    ):
                        task = asyncio.create_task(self._run_one(claimed, stop))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                except Exception as exc:  # the database is down: look again later
                    log.warning("backfills not claimed", error=str(exc)[:300])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_EVERY)
        finally:
            if self._tasks:
                _, late = await asyncio.wait(self._tasks, timeout=STOP_DEADLINE + SAVE_EVERY)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)

    async def _claim(self) -> Claimed | None:
        async with self._engine.begin() as conn:
            row = (await conn.execute(_CLAIM, {"owner": self.owner, "lease": LEASE})).first()
        return Claimed.of(row) if row is not None else None

    async def _subscription(self, subscription_id: uuid.UUID) -> SubscriptionView:
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(Subscription).where(Subscription.id == subscription_id)
                )
            ).scalar_one_or_none()
        if row is None:
            raise SubscriptionGone("the subscription was deleted")
        if not row.is_active:
            raise SubscriptionGone("the subscription is inactive")
        return SubscriptionView.of(row)

    async def _run_one(self, job: Claimed, stop: asyncio.Event) -> None:
        log.info("backfill started", resumed=job.positions is not None, **job.log_fields())
        try:
            await self._drive(job, stop)
        except SubscriptionGone as exc:
            await self._finish(job, "failed", str(exc))
        except Exception as exc:
            log.exception("backfill failed", **job.log_fields())
            with contextlib.suppress(Exception):
                await self._finish(job, "failed", f"{type(exc).__name__}: {str(exc)[:400]}")

    async def _drive(self, job: Claimed, stop: asyncio.Event) -> None:
        sub = await self._subscription(job.subscription_id)
        async with history_reader(self._settings) as consumer:
            if job.positions is None or job.stops is None:
                window = await window_offsets(consumer, self._topics.events, job.since, job.until)
                job.positions, job.stops = dict(window.starts), dict(window.stops)
                if await self._save(job) != "running":
                    return
            backfill = Backfill(
                job,
                sub,
                self._engine,
                self._producer,
                self._topics,
                self._publish_rate,
                self._scan_rate,
            )
            scan = asyncio.create_task(backfill.scan(consumer))
            try:
                while not scan.done():
                    await asyncio.wait({scan}, timeout=SAVE_EVERY)
                    if scan.done():
                        break
                    status = await self._save(job)
                    if status != "running":
                        log.info("backfill stopped", status=status or "lost", **job.log_fields())
                        return
                    if stop.is_set():
                        await self._release(job)
                        return
                    backfill.follow(await self._subscription(job.subscription_id))
            finally:
                if not scan.done():
                    scan.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await scan
            scan.result()  # a scan that failed fails the backfill
        await self._finish(job, "done", None)

    async def _save(self, job: Claimed) -> str | None:
        """Progress and lease; the status as it is now (None: the claim was lost)."""
        async with self._engine.begin() as conn:
            row = (await conn.execute(_SAVE, job.params(self.owner))).first()
        return None if row is None else str(row[0])

    async def _release(self, job: Claimed) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(_RELEASE, job.params(self.owner))
        log.info("backfill released", **job.log_fields())

    async def _finish(self, job: Claimed, status: str, error: str | None) -> None:
        params = job.params(self.owner) | {"status": status, "error": error}
        async with self._engine.begin() as conn:
            await conn.execute(_FINISH, params)
        seconds = max(time.monotonic() - job.started, 1e-6)
        log.info(
            "backfill finished",
            status=status,
            error=error,
            seconds=round(seconds, 3),
            events_per_second=round(job.scanned / seconds),
            **job.log_fields(),
        )


@asynccontextmanager
async def running_backfills(settings: Settings, stop: asyncio.Event) -> AsyncIterator[None]:
    """The backfill worker for the block, with its own database pool and producer (the
    janitor's pass holds its one connection for minutes). Waits for it on the way out."""
    async with AsyncExitStack() as resources:
        engine = make_engine(settings, pool_size=settings.backfill_concurrency + 1)
        resources.push_async_callback(engine.dispose)
        producer = make_producer(settings)
        await producer.start()
        resources.push_async_callback(producer.stop)
        worker = BackfillWorker(settings, engine, producer)
        task = asyncio.create_task(worker.run(stop))
        try:
            yield
        finally:
            stop.set()
            await task
