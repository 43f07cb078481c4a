"""The retry scheduler loop: hold each tier partition until its head record is due.

Per partition, records are taken in offset order (design §2: one fixed delay per tier, so
offset order is due order up to jitter):

- a record that is due (or carries no due time) is re-published unchanged (key, value
  bytes, headers including ``attempt``) to the deliveries topic; poison records are
  logged and skipped;
- the first record that is not yet due stops the batch: the partition is rewound to it,
  paused, and resumed by a loop timer at its ``due_at``. Nothing sleeps on a record.

The loop keeps calling ``getmany`` with a short timeout whatever is paused. That is what
keeps the member in its group (aiokafka leaves when ``getmany`` has not been called for
``max_poll_interval_ms``) and what picks up partitions as their timers resume them.

Offsets are committed per partition at one past the longest prefix of records whose
publish the broker acknowledged (acks=all), never before. A crash therefore re-publishes
at most the unacknowledged tail: duplicates, never losses. A rebalance loses pause state:
revocation cancels the timers and commits what is finished, and the new owner starts from
the committed offset and decides again from the records' own due times.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from opentelemetry.trace import Span

from services.retry_scheduler.progress import InOrderAcks
from services.retry_scheduler.settings import SchedulerSettings
from services.retry_scheduler.timing import Hold, resume_delay, split_due
from shared import tracing
from shared.kafka import make_consumer, make_producer
from shared.logging import get_logger
from shared.metrics import (
    POISON_RECORDS,
    PUBLISHED,
    RETRY_LATENESS,
    RETRY_PAUSED_PARTITIONS,
    RETRY_REPUBLISHED,
    serve_metrics,
)
from shared.records import DeliveryJob, RecordError
from shared.settings import Settings
from shared.topics import Topics

log = get_logger("retry_scheduler")

Clock = Callable[[], float]

# During a rebalance the broker waits rebalance_timeout_ms for members to rejoin (aiokafka
# sets it to session_timeout_ms: 10 s in shared.kafka). Revocation waits at most half of
# that for acks, then commits what it has; a longer wait would get this member evicted.
REVOKE_DRAIN_SECONDS = 5.0


def group_id(settings: Settings) -> str:
    return Topics.from_settings(settings).retry_scheduler_group


@dataclass(eq=False, slots=True)
class _Partition:
    """What this member knows about one assigned tier partition.

    Replaced after a failed publish and dropped on revocation; acks that arrive later land
    in the old object and are ignored, so they can never move a newer commit point.
    """

    tp: TopicPartition
    acks: InOrderAcks = field(default_factory=InOrderAcks)
    in_flight: set[asyncio.Future[Any]] = field(default_factory=set)
    committed: int | None = None
    failed_offset: int | None = None
    failure: BaseException | None = None

    def fail(self, offset: int, exc: BaseException) -> None:
        if self.failed_offset is None or offset < self.failed_offset:
            self.failed_offset, self.failure = offset, exc


class RetryScheduler:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        topics: Topics,
        config: SchedulerSettings,
        *,
        clock: Clock = time.time,
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._topics = topics
        self._config = config
        self._clock = clock
        self._parts: dict[TopicPartition, _Partition] = {}
        self._timers: dict[TopicPartition, asyncio.TimerHandle] = {}
        self.listener = _RebalanceListener(self)
        # Times partitions were assigned to this member: 1 for a stable group (tests check
        # that a long pause does not cost the membership).
        self.assignments = 0

    # --- the loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                batches = await self._consumer.getmany(timeout_ms=self._config.poll_timeout_ms)
                if stop.is_set():
                    break  # not started, so not committed: the next owner reads them again
                for tp, records in batches.items():
                    await self._take(tp, records)
                await self._commit(self._parts.values())
                self._rewind_failed()
                await self._bound_in_flight()
        finally:
            await self._drain()

    async def _take(self, tp: TopicPartition, records: list[Any]) -> None:
        part = self._parts.get(tp)
        if part is None:
            if tp not in self._consumer.assignment():
                return
            part = self._parts[tp] = _Partition(tp)
        jobs = [(record, self._decode(record)) for record in records]
        split = split_due(
            [(r.offset, job.due_at.timestamp() if job and job.due_at else None) for r, job in jobs],
            self._clock(),
        )
        for record, job in jobs[: split.ready]:
            # Each publish may yield to a rebalance or a failed ack: re-check ownership.
            if self._parts.get(tp) is not part or part.failed_offset is not None:
                return
            if job is None:
                part.acks.skip(record.offset)
            else:
                await self._publish(part, record, job)
        if split.hold is not None and self._parts.get(tp) is part and part.failed_offset is None:
            self._hold(tp, split.hold)

    def _decode(self, record: Any) -> DeliveryJob | None:
        try:
            return DeliveryJob.decode(record.value, record.headers)
        except RecordError as exc:
            POISON_RECORDS.labels(topic=record.topic).inc()
            log.error(
                "poison record skipped",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                error=str(exc),
            )
            return None

    async def _publish(self, part: _Partition, record: Any, job: DeliveryJob) -> None:
        part.acks.start(record.offset)
        headers = list(record.headers)
        span: Span | None = None
        if tracing.enabled:
            # The one change to the record: its trace context names this span, a child
            # of the retry scheduling span the record carries.
            span = tracing.start_producer(
                self._topics.deliveries,
                tracing.extract(headers),
                {"hookstream.delivery_id": str(job.delivery_id), "hookstream.tier": record.topic},
                operation="re-publish",
            )
            headers = tracing.replace_trace_headers(headers, span)
        try:
            # Unchanged: the same key, the exact value bytes and every header, attempt
            # included. send() returns once the record is queued; the ack comes later.
            ack = await self._producer.send(
                self._topics.deliveries,
                record.value,
                key=record.key,
                headers=headers,
            )
        except KafkaError as exc:
            part.fail(record.offset, exc)
            if span is not None:
                tracing.end(span, exc)
            return
        part.in_flight.add(ack)
        acked = functools.partial(self._acked, part, record, job, span)
        if span is None:
            ack.add_done_callback(acked)
            return
        # The callback runs in a copy of this context: its log line carries the span.
        with tracing.activate(span, end=False):
            ack.add_done_callback(acked)

    def _acked(
        self,
        part: _Partition,
        record: Any,
        job: DeliveryJob,
        span: Span | None,
        ack: asyncio.Future[Any],
    ) -> None:
        part.in_flight.discard(ack)
        exc = asyncio.CancelledError() if ack.cancelled() else ack.exception()
        if span is not None:
            tracing.end(span, exc)
        if exc is not None:
            part.fail(record.offset, exc)
            return
        part.acks.finish(record.offset)
        now = self._clock()
        late = now - job.due_at.timestamp() if job.due_at else 0.0
        PUBLISHED.labels(topic=self._topics.deliveries).inc()
        RETRY_REPUBLISHED.labels(tier=record.topic).inc()
        RETRY_LATENESS.observe(max(late, 0.0))
        log.info(
            "retry re-published",
            **job.log_fields(),
            tier=record.topic,
            late_ms=round(late * 1000),
        )

    # --- pausing --------------------------------------------------------------------

    def _hold(self, tp: TopicPartition, hold: Hold) -> None:
        """Rewind to the record that is not due, pause, and resume when it is."""
        self._consumer.seek(tp, hold.offset)
        self._pause(tp, resume_delay(hold.due_at, self._clock()))
        log.debug(
            "partition held",
            topic=tp.topic,
            partition=tp.partition,
            offset=hold.offset,
            due_at=hold.due_at,
        )

    def _pause(self, tp: TopicPartition, delay: float) -> None:
        self._consumer.pause(tp)
        self._cancel_timer(tp)
        self._timers[tp] = asyncio.get_running_loop().call_later(delay, self._resume, tp)
        RETRY_PAUSED_PARTITIONS.set(len(self._timers))

    def _resume(self, tp: TopicPartition) -> None:
        self._timers.pop(tp, None)
        RETRY_PAUSED_PARTITIONS.set(len(self._timers))
        if tp in self._consumer.assignment():
            # The next getmany fetches the head again and split_due re-checks it against
            # the wall clock, so an early timer can only cause another pause.
            self._consumer.resume(tp)

    def _cancel_timer(self, tp: TopicPartition) -> None:
        timer = self._timers.pop(tp, None)
        if timer is not None:
            timer.cancel()
        RETRY_PAUSED_PARTITIONS.set(len(self._timers))

    # --- commits and failures -------------------------------------------------------

    async def _commit(self, parts: Iterable[_Partition]) -> None:
        offsets: dict[TopicPartition, int] = {}
        owners: list[_Partition] = []
        for part in parts:
            position = part.acks.position
            if position is not None and position != part.committed:
                offsets[part.tp] = position
                owners.append(part)
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            # Membership changed under us (CommitFailedError) or the coordinator moved:
            # the next owner re-publishes from the last commit. A duplicate, not a loss.
            log.warning("commit failed", error=repr(exc), partitions=len(offsets))
            return
        for part in owners:
            part.committed = offsets[part.tp]

    def _rewind_failed(self) -> None:
        """Re-read from the first record whose publish failed, after a short pause."""
        for tp, part in list(self._parts.items()):
            if part.failed_offset is None:
                continue
            log.error(
                "re-publish failed; partition rewound",
                topic=tp.topic,
                partition=tp.partition,
                offset=part.failed_offset,
                error=repr(part.failure),
                retry_in=self._config.publish_retry_backoff,
            )
            # A fresh record of the partition: late acks of the old one cannot move it.
            self._parts[tp] = _Partition(tp, committed=part.committed)
            if tp in self._consumer.assignment():
                self._consumer.seek(tp, part.failed_offset)
                self._pause(tp, self._config.publish_retry_backoff)

    async def _bound_in_flight(self) -> None:
        in_flight = self._in_flight(self._parts.values())
        while len(in_flight) > self._config.max_in_flight:
            await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            in_flight = self._in_flight(self._parts.values())

    @staticmethod
    def _in_flight(parts: Iterable[_Partition]) -> set[asyncio.Future[Any]]:
        return {ack for part in parts for ack in part.in_flight}

    # --- rebalance and shutdown -----------------------------------------------------

    async def _finish(self, parts: list[_Partition], wait_seconds: float) -> None:
        """Wait (bounded) for in-flight publishes of ``parts``, then commit what is acked."""
        in_flight = self._in_flight(parts)
        if in_flight:
            _, pending = await asyncio.wait(in_flight, timeout=wait_seconds)
            if pending:
                log.warning("publishes still in flight after drain timeout", count=len(pending))
        await self._commit(parts)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        if not revoked:  # the first join of this member
            return
        for tp in revoked:
            self._cancel_timer(tp)
        # Dropped first so that the loop stops adding work to them while we wait.
        parts = [part for tp in revoked if (part := self._parts.pop(tp, None)) is not None]
        await self._finish(parts, min(self._config.drain_timeout, REVOKE_DRAIN_SECONDS))
        log.info("partitions revoked", count=len(revoked))

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assignments += 1
        # Fresh assignments start unpaused at the committed offset; the records' due
        # times decide again whether they wait.
        log.info(
            "partitions assigned",
            partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
        )

    async def _drain(self) -> None:
        for tp in list(self._timers):
            self._cancel_timer(tp)
        try:
            await self._finish(list(self._parts.values()), self._config.drain_timeout)
        except Exception as exc:  # the loop's own error, if any, matters more
            log.error("final commit failed", error=repr(exc))


class _RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, scheduler: RetryScheduler) -> None:
        self._scheduler = scheduler

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._scheduler.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._scheduler.on_assigned(assigned)


async def run(
    settings: Settings, stop: asyncio.Event, config: SchedulerSettings | None = None
) -> RetryScheduler:
    """Build the clients, run the loop until ``stop``, then drain, commit and close.

    Returns the scheduler so that tests can look at what happened (assignments).
    """
    config = config or SchedulerSettings()
    topics = Topics.from_settings(settings)
    serve_metrics(settings.metrics_port, settings.metrics_host)
    async with AsyncExitStack() as stack:
        producer = make_producer(settings)
        await producer.start()
        stack.push_async_callback(producer.stop)
        consumer = make_consumer(
            settings,
            group_id=group_id(settings),
            max_poll_interval_ms=config.max_poll_interval_ms,
        )
        scheduler = RetryScheduler(consumer, producer, topics, config)
        consumer.subscribe(topics.retry_topics, listener=scheduler.listener)
        await consumer.start()
        # Closed before the producer: the scheduler has committed by then, and leaving
        # the group promptly hands its partitions to another member.
        stack.push_async_callback(consumer.stop)
        log.info("retry scheduler consuming", topics=list(topics.retry_topics))
        await scheduler.run(stop)
    return scheduler
