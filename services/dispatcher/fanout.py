"""Fan-out stage: one event from ``<prefix>.events`` → one delivery job per subscription.

Targeted events (``POST /ingest/{id}``) go to their subscription after re-checking that it
still exists, is active, wants the event type and matches its filter (a test event,
trigger ``test``, goes whatever they say); fan-out events (``POST /events``) go
to every active subscription that matches, from the subscription cache. Jobs are keyed
by subscription id with ``delivery_id = uuid5(event_id, subscription_id)``, so replaying
an event after a crash reproduces the same ids.

``FanOutStage.run`` takes a chunk of one partition's events and returns once their rows
are committed and every job is acknowledged by the broker: only then are the events'
offsets finished.

A targeted event whose subscription no longer wants it was promised to the sender (202
with a delivery id), so it ends with a FAILURE row saying why it was not delivered
rather than silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
from opentelemetry.context import Context

from services.dispatcher.attempts import AttemptWriter, attempt_row
from services.dispatcher.batching import RowWriter
from services.dispatcher.delivery_stage import Progress
from services.dispatcher.publishing import OutRecord, Publisher
from services.dispatcher.stalls import ZombieFence
from shared import tracing
from shared.logging import get_logger
from shared.matching import Payload, not_wanted_reason
from shared.metrics import DELIVERIES
from shared.models import AttemptStatus
from shared.records import DeliveryJob, EventRecord
from shared.subscriptions import SubscriptionCache, SubscriptionView
from shared.topics import Topics

# (the previous chunk's "sent", or None; this chunk's): see FanOutStage.run.
Turn = tuple[asyncio.Future[None] | None, asyncio.Future[None]]

log = get_logger("dispatcher.fanout")

EventRow = tuple[Any, ...]

# Re-running fan-out after a crash writes the same event again: keep the first.
_INSERT_EVENTS = """
INSERT INTO events (id, received_at, event_type, subscription_id, content_type, body,
                    application_id)
SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::uuid[], $5::text[],
                     $6::bytea[], $7::uuid[])
ON CONFLICT (id, received_at) DO NOTHING
"""


class EventWriter(RowWriter[EventRow]):
    """Event rows in batches: one multi-row INSERT per group-commit window."""

    def __init__(self, pool: asyncpg.Pool, *, window: float = 0.02, max_rows: int = 1000):
        super().__init__("events", self._insert, window=window, max_items=max_rows)
        self._pool = pool

    def write(self, event: EventRecord) -> asyncio.Future[None]:
        return self._batch.add(
            (
                event.event_id,
                event.received_at,
                event.event_type,
                event.subscription_id,
                event.content_type,
                event.body,
                event.application_id,
            )
        )

    async def _insert(self, rows: list[EventRow]) -> None:
        columns = list(zip(*rows, strict=True))
        async with self._pool.acquire() as conn:
            await conn.execute(_INSERT_EVENTS, *columns)


@dataclass(slots=True)
class FanOutStage:
    topics: Topics
    cache: SubscriptionCache
    publisher: Publisher
    events: EventWriter
    attempts: AttemptWriter
    fence: ZombieFence | None = None

    async def run(
        self,
        events: Sequence[EventRecord],
        progress: Progress | None = None,
        turn: Turn | None = None,
    ) -> None:
        """Fan out a chunk of events (one partition's, in offset order). ``turn``: the
        previous chunk's "sent" to wait for before sending, and this chunk's to set."""
        try:
            await self._run(events, progress, turn)
        finally:
            if turn is not None and not turn[1].done():
                # Sent, or never will be (cancelled, failed): the next chunk may go. A
                # chunk retried after a failure may then follow later ones; ordered
                # delivery's guarantee rests on the broker having refused nothing.
                turn[1].set_result(None)

    async def _run(
        self, events: Sequence[EventRecord], progress: Progress | None, turn: Turn | None
    ) -> None:
        if self.fence is not None:
            await self.fence.wait()  # still cancellable: nothing written or published
        if progress is not None:
            progress.sending = True
        durable: list[asyncio.Future[None]] = []
        records: list[OutRecord] = []
        deliveries = self.topics.deliveries
        spans = FanOutSpans(self.topics.events, deliveries) if tracing.enabled else None
        for event in events:
            if spans is not None:
                spans.event(event)
            durable.append(self.events.write(event))
            payload = Payload(event.body)
            if event.subscription_id is not None:
                sub = await self.cache.get(event.subscription_id, event.application_id)
                reason = not_wanted_reason(sub, event, payload)
                if reason is not None:
                    durable.append(self._not_delivered(event, sub, reason))
                    continue
                assert sub is not None
                targets: Sequence[SubscriptionView] = (sub,)
            else:
                matched = await self.cache.matching(event.application_id, event.event_type)
                targets = [t for t in matched if payload.accepted_by(t)]
                log.debug("fanned out", event_id=str(event.event_id), jobs=len(targets))
            for target in targets:
                job = DeliveryJob.for_event(event, target.id)
                if spans is not None:
                    job = spans.job(job)
                records.append(OutRecord(deliveries, job.key, job.body, job.headers()))
        sent = None
        if turn is not None:
            after, sent = turn
            if after is not None and not after.done():
                await asyncio.shield(after)
        try:
            await self.publisher.publish(records, sent)
            for future in durable:
                await future
        except BaseException as exc:
            if spans is not None:
                spans.group.end(exc)
            raise
        if spans is not None:
            spans.group.end()

    def _not_delivered(
        self, event: EventRecord, sub: SubscriptionView | None, reason: str
    ) -> asyncio.Future[None]:
        """Record a FAILURE row for a targeted event not delivered; returns its future."""
        assert event.subscription_id is not None
        job = DeliveryJob.for_event(event, event.subscription_id)
        durable = self.attempts.write(
            attempt_row(
                job,
                target_url=sub.target_url if sub is not None else "",
                status=AttemptStatus.FAILURE,
                status_code=None,
                error=reason,
                duration_ms=None,
                excerpt=None,
                now=datetime.now(UTC),
            )
        )
        DELIVERIES.labels(AttemptStatus.FAILURE.value).inc()
        log.info(
            "targeted event not delivered",
            event_id=str(event.event_id),
            delivery_id=str(job.delivery_id),
            subscription_id=str(event.subscription_id),
            reason=reason,
        )
        return durable


class FanOutSpans:
    """Tracing of a chunk: a consumer span per event (child of the record's context) and
    a producer span per job under it, whose context the job's record carries. All end
    once the chunk's jobs are acknowledged and its rows written."""

    __slots__ = ("_current", "_deliveries", "_events", "group")

    def __init__(self, events_topic: str, deliveries_topic: str) -> None:
        self._events = events_topic
        self._deliveries = deliveries_topic
        self.group = tracing.SpanGroup()
        self._current: Context | None = None

    def event(self, event: EventRecord) -> None:
        span = tracing.start_consumer(
            "fan-out", self._events, event.extra, {"hookstream.event_id": str(event.event_id)}
        )
        self._current = tracing.context_of(self.group.add(span))

    def job(self, job: DeliveryJob) -> DeliveryJob:
        attrs = {
            "hookstream.delivery_id": str(job.delivery_id),
            "hookstream.subscription_id": str(job.subscription_id),
        }
        span = self.group.add(tracing.start_producer(self._deliveries, self._current, attrs))
        return replace(job, extra={**job.extra, **tracing.headers_of(span)})
