"""Ordered delivery (design §12): one delivery at a time per ordered subscription, in the
order the broker accepted them.

**Where waiting jobs live.** An ordered subscription's job leaves the deliveries topic as
soon as it is read: it is stored in PostgreSQL (``ordered_jobs``, migration 0008), and
once that row is committed the job's offset counts as finished. So a head that keeps
failing for hours holds back no offset, pauses no partition and costs no memory; the
other subscriptions on its partitions, ordered ones included, go on. A crash replays at
most the jobs not yet stored, and a stored job read again is recognised by its delivery
id and keeps its place.

**Order of intake.** The jobs of one subscription share a deliveries partition (keyed by
subscription id) and are read in offset order, but their tasks run concurrently. The
consumer hands out a ticket per job in offset order (``IntakeOrder``); an ordered job
waits for the earlier job of its subscription to be routed (queued for storing, or found
not ordered) before it is queued itself. Jobs are stored by a group commit
(``IntakeWriter``): one transaction per batch, in the order they were queued, each taking
the next number of its subscription's sequence (``ordered_sequences.last_seq``): the
``webhook-sequence`` its receiver sees.

**Who sends.** One process at a time serves a queue: the holder of its lease
(``ordered_sequences.owner`` / ``lease_until``, renewed before every request). The
process that stores a job starts serving its queue if the lease is free; every process
looks for queues with waiting jobs and no live lease every ``SCAN_INTERVAL`` (a crashed
owner's) and takes them over. The server sends the head, waits for its outcome and
records it before it reads the next head. A failure is retried in place on the
subscription's schedule (the row's ``next_at``) while the later jobs wait; after the last
attempt it ends in FAILURE with a dead letter, and the next job goes.

After a crash the head may be sent again (its outcome was not stored); a later job is
never sent before an earlier one's first attempt, because a job is marked done only
with its attempt row, in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg
import orjson

from services.dispatcher.batching import RowWriter
from services.dispatcher.delivery import Outcome
from shared.logging import get_logger
from shared.loopref import LoopRef
from shared.matching import unavailable_reason
from shared.records import DeliveryJob

if TYPE_CHECKING:
    from services.dispatcher.delivery_stage import DeliveryStage

log = get_logger("dispatcher.ordered")

# How often every process looks for queues whose owner is gone.
SCAN_INTERVAL = 1.0
# The lease is renewed before every request when older than this.
RENEW_AFTER = 2.0
# A target whose breaker is open, or a subscription over its rate: the head waits this
# long before it is tried again, using no attempt.
NOT_NOW_WAIT = 1.0
# An unexpected error (database away): the queue's server pauses, then carries on.
_ERROR_WAIT_FIRST = 0.5
_ERROR_WAIT_MAX = 30.0
# A job sent again by hand (manual retry, replay) after it ended goes to the back of the
# queue; one read again after a crash, or backfilled, keeps the place it has.
_REQUEUE_TRIGGERS = frozenset({"manual-retry", "replay"})
# Shutdown: how long queued jobs may take to be stored (their offsets wait for them).
_CLOSE_GRACE = 5.0

_STORED = """
SELECT delivery_id, done_at IS NOT NULL FROM ordered_jobs WHERE delivery_id = ANY($1::uuid[])
"""
# Takes n numbers at once for each subscription: its jobs in the batch get the last n.
_TAKE_SEQS = """
INSERT INTO ordered_sequences AS q (subscription_id, last_seq)
SELECT * FROM unnest($1::uuid[], $2::bigint[])
ON CONFLICT (subscription_id) DO UPDATE SET last_seq = q.last_seq + EXCLUDED.last_seq
RETURNING subscription_id, last_seq
"""
_INSERT = """
INSERT INTO ordered_jobs (subscription_id, seq, delivery_id, headers, body)
SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::bytea[], $5::bytea[])
"""
_REQUEUE = """
UPDATE ordered_jobs SET seq = $2, headers = $4, body = $5, attempts = 0, next_at = now(),
    done_at = NULL
WHERE subscription_id = $1 AND delivery_id = $3
"""
_CLAIM = """
UPDATE ordered_sequences SET owner = $2, lease_until = now() + make_interval(secs => $3)
WHERE subscription_id = $1 AND (owner IS NULL OR owner = $2 OR lease_until < now())
RETURNING 1
"""
_RELEASE = """
UPDATE ordered_sequences SET owner = NULL, lease_until = NULL
WHERE subscription_id = $1 AND owner = $2
"""
_RELEASE_ALL = "UPDATE ordered_sequences SET owner = NULL, lease_until = NULL WHERE owner = $1"
_HEAD = """
SELECT seq, headers, body, attempts, next_at FROM ordered_jobs
WHERE subscription_id = $1 AND done_at IS NULL ORDER BY seq LIMIT 1
"""
_ORPHANS = """
SELECT q.subscription_id FROM ordered_sequences q
WHERE (q.owner IS NULL OR q.lease_until < now())
  AND EXISTS (SELECT 1 FROM ordered_jobs j
              WHERE j.subscription_id = q.subscription_id AND j.done_at IS NULL)
LIMIT 1000
"""
# Both conditioned on the lease: a process that lost it (stalled past it) changes nothing.
_DONE = """
UPDATE ordered_jobs SET done_at = now(), attempts = $4
WHERE subscription_id = $1 AND seq = $2
  AND EXISTS (SELECT 1 FROM ordered_sequences WHERE subscription_id = $1 AND owner = $3)
RETURNING 1
"""
_LATER = """
UPDATE ordered_jobs SET attempts = $4, next_at = $5
WHERE subscription_id = $1 AND seq = $2
  AND EXISTS (SELECT 1 FROM ordered_sequences WHERE subscription_id = $1 AND owner = $3)
RETURNING 1
"""


class LeaseLost(Exception):
    """Another process serves this queue now (this one stalled past its lease)."""


# --- intake order -------------------------------------------------------------------


class Ticket:
    """A job's place among the jobs of its subscription read by this process."""

    __slots__ = ("_key", "_mine", "_order", "_prev")

    def __init__(
        self,
        order: IntakeOrder,
        key: uuid.UUID,
        prev: asyncio.Future[None] | None,
        mine: asyncio.Future[None],
    ) -> None:
        self._order, self._key, self._prev, self._mine = order, key, prev, mine

    async def turn(self) -> None:
        """Wait until every earlier job of the subscription has been routed."""
        prev = self._prev
        if prev is not None and not prev.done():
            await asyncio.shield(prev)

    def release(self) -> None:
        """This job is routed (stored, or not an ordered one): the next may go."""
        if not self._mine.done():
            self._mine.set_result(None)
            self._order.forget(self._key, self._mine)


class IntakeOrder:
    """Tickets per subscription, handed out in offset order by the consumer."""

    def __init__(self) -> None:
        self._tails: dict[uuid.UUID, asyncio.Future[None]] = {}
        self._loop = LoopRef()

    def ticket(self, key: uuid.UUID) -> Ticket:
        mine = self._loop().create_future()
        prev = self._tails.get(key)
        self._tails[key] = mine
        return Ticket(self, key, prev, mine)

    def forget(self, key: uuid.UUID, future: asyncio.Future[None]) -> None:
        if self._tails.get(key) is future:
            del self._tails[key]

    def __len__(self) -> int:
        return len(self._tails)


# --- stored jobs --------------------------------------------------------------------


def pack_headers(job: DeliveryJob) -> bytes:
    """The job's record headers, as stored (bytes values as latin-1 text)."""
    return orjson.dumps([(k, v.decode("latin-1")) for k, v in job.headers()])


def unpack_job(headers: bytes, body: bytes) -> DeliveryJob:
    pairs = [(k, v.encode("latin-1")) for k, v in orjson.loads(headers)]
    return DeliveryJob.decode(body, pairs)


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    job: DeliveryJob  # with the attempt about to be made and its sequence number
    next_at: datetime


class IntakeWriter(RowWriter[DeliveryJob]):
    """Ordered jobs to ``ordered_jobs`` through one group commit, in the order queued."""

    def __init__(self, pool: asyncpg.Pool, *, window: float = 0.01) -> None:
        super().__init__("ordered-intake", self._store, window=window, max_items=1000)
        self._pool = pool

    def write(self, job: DeliveryJob) -> asyncio.Future[None]:
        return self._batch.add(job)

    async def _store(self, jobs: list[DeliveryJob]) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            stored = dict(await conn.fetch(_STORED, [j.delivery_id for j in jobs]))
            fresh: dict[uuid.UUID, DeliveryJob] = {}
            for job in jobs:
                done = stored.get(job.delivery_id)
                if job.delivery_id in fresh or (
                    done is not None and not (done and job.trigger in _REQUEUE_TRIGGERS)
                ):
                    continue  # in the queue already, or ended and read again: keeps its place
                fresh[job.delivery_id] = job
            if not fresh:
                return
            counts = Counter(j.subscription_id for j in fresh.values())
            rows = await conn.fetch(_TAKE_SEQS, list(counts), list(counts.values()))
            # The first number each subscription's jobs take in this batch.
            next_seq = {sub: last - counts[sub] + 1 for sub, last in rows}
            new: list[tuple[uuid.UUID, int, uuid.UUID, bytes, bytes]] = []
            for job in fresh.values():
                seq = next_seq[job.subscription_id]
                next_seq[job.subscription_id] = seq + 1
                row = (job.subscription_id, seq, job.delivery_id, pack_headers(job), job.body)
                if job.delivery_id in stored:
                    await conn.execute(_REQUEUE, *row)  # sent again by hand: rare
                else:
                    new.append(row)
            if new:
                await conn.execute(_INSERT, *(list(column) for column in zip(*new, strict=True)))


# --- the queues ---------------------------------------------------------------------


@dataclass
class OrderedQueues:
    """Intake for ordered subscriptions' jobs, and the servers of their queues."""

    stage: DeliveryStage
    pool: asyncpg.Pool
    owner: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    )
    scan_interval: float = SCAN_INTERVAL
    order: IntakeOrder = field(default_factory=IntakeOrder)
    _servers: dict[uuid.UUID, asyncio.Task[None]] = field(default_factory=dict)
    _wake: dict[uuid.UUID, asyncio.Event] = field(default_factory=dict)
    writer: IntakeWriter = field(init=False)
    _scanning: asyncio.Task[None] | None = None
    _closing: bool = False

    @property
    def lease_seconds(self) -> float:
        # Outlasts any one request (renewed just before it), with room for a slow commit.
        return self.stage.settings.delivery_timeout + 10.0

    def __post_init__(self) -> None:
        self.writer = IntakeWriter(self.pool)

    def start(self) -> None:
        self.writer.start()
        self._scanning = asyncio.create_task(self._scan_loop(), name="ordered-scan")

    async def close(self) -> None:
        """Stop serving, and free the leases so another process takes over at once."""
        self._closing = True
        tasks = [t for t in (self._scanning, *self._servers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.writer.close(_CLOSE_GRACE)
        try:
            async with self.pool.acquire() as conn:
                await conn.execute(_RELEASE_ALL, self.owner)
        except Exception as exc:  # they expire by themselves
            log.warning("ordered leases not released", error=repr(exc))

    # --- intake -------------------------------------------------------------------

    async def intake(self, job: DeliveryJob, ticket: Ticket) -> None:
        """Store ``job`` at the back of its subscription's queue, after the jobs read
        before it. Returns once the row is committed: the offset may then be finished."""
        try:
            await ticket.turn()
        except asyncio.CancelledError:
            ticket.release()
            raise
        stored = self.writer.write(job)
        ticket.release()  # queued in order: the next job of the subscription may follow
        await stored
        self.serve(job.subscription_id)

    # --- serving ------------------------------------------------------------------

    def serve(self, sub_id: uuid.UUID) -> None:
        """Make sure this process serves the queue if nobody else does."""
        if self._closing:
            return
        task = self._servers.get(sub_id)
        if task is not None:
            self._wake[sub_id].set()
            return
        self._wake[sub_id] = asyncio.Event()
        self._servers[sub_id] = asyncio.create_task(self._serve(sub_id), name=f"ordered-{sub_id}")

    async def _scan_loop(self) -> None:
        while True:
            await asyncio.sleep(self.scan_interval)
            try:
                async with self.pool.acquire() as conn:
                    rows = await conn.fetch(_ORPHANS)
            except Exception as exc:
                log.warning("ordered queues not scanned", error=repr(exc))
                continue
            for row in rows:
                if row[0] not in self._servers:
                    self.serve(row[0])

    async def _serve(self, sub_id: uuid.UUID) -> None:
        wake = self._wake[sub_id]
        try:
            wait = _ERROR_WAIT_FIRST
            while True:
                try:
                    if not await self._drain(sub_id, wake):
                        return
                except (asyncio.CancelledError, LeaseLost):
                    raise
                except Exception as exc:
                    log.error(
                        "ordered queue: will retry",
                        subscription_id=str(sub_id),
                        error=f"{type(exc).__name__}: {exc}",
                        retry_in=wait,
                        exc_info=exc,
                    )
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, _ERROR_WAIT_MAX)
        except LeaseLost:
            log.warning("ordered queue taken over by another process", subscription_id=str(sub_id))
        finally:
            del self._servers[sub_id]
            del self._wake[sub_id]

    async def _drain(self, sub_id: uuid.UUID, wake: asyncio.Event) -> bool:
        """Serve the queue until it is empty (False: done) or another process has it."""
        if not await self._claim(sub_id):
            return False
        renewed = time.monotonic()
        while True:
            wake.clear()
            head = await self._head(sub_id)
            if head is None:
                async with self.pool.acquire() as conn:
                    await conn.execute(_RELEASE, sub_id, self.owner)
                if not wake.is_set():
                    return False
                # A job arrived while the lease was being let go: take it up again.
                if not await self._claim(sub_id):
                    return False
                renewed = time.monotonic()
                continue
            delay = (head.next_at - datetime.now(UTC)).total_seconds()
            if delay > 0:
                # A retry's time has not come: wait, keeping the lease alive.
                await asyncio.sleep(min(delay, RENEW_AFTER))
            if delay > 0 or time.monotonic() - renewed > RENEW_AFTER:
                if not await self._claim(sub_id):
                    raise LeaseLost
                renewed = time.monotonic()
            if delay > 0:
                continue  # read the head again: it may have changed meanwhile
            await self._deliver(sub_id, head)

    async def _claim(self, sub_id: uuid.UUID) -> bool:
        async with self.pool.acquire() as conn:
            return bool(await conn.fetchval(_CLAIM, sub_id, self.owner, self.lease_seconds))

    async def _head(self, sub_id: uuid.UUID) -> Head | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(_HEAD, sub_id)
        if row is None:
            return None
        seq, headers, body, attempts, next_at = row
        job = replace(unpack_job(headers, body), attempt=attempts + 1, sequence=seq)
        return Head(seq, job, next_at)

    async def _deliver(self, sub_id: uuid.UUID, head: Head) -> None:
        """One attempt at the head, and its outcome recorded with the queue's state."""
        stage = self.stage
        job = head.job
        sub = await stage.cache.get(sub_id, job.application_id)
        target_url = sub.target_url if sub is not None else ""
        duration_ms: int | None = None
        if (unavailable := unavailable_reason(sub)) is not None:
            outcome = Outcome.skipped(unavailable)
        else:
            assert sub is not None
            if sub.rate_limit:
                wait = stage.rates.reserve(sub_id, sub.rate_limit)
                if wait is None:
                    await asyncio.sleep(NOT_NOW_WAIT)
                    return
                if wait:
                    await asyncio.sleep(wait)
            attempted = await stage.try_once(job, sub)
            if isinstance(attempted, str):
                # Breaker open or target saturated: not attempted, no attempt used.
                await asyncio.sleep(NOT_NOW_WAIT)
                return
            outcome, duration_ms = attempted
        decision, row, streak = stage.conclude(job, sub, target_url, outcome, duration_ms)
        dead_letter = stage.follow_up(job, decision) if decision.dead_letter else []
        if dead_letter:
            await stage.publisher.publish(dead_letter)
        final = decision.retry is None
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await stage.attempts.copy(conn, [row])
                if final:
                    kept = await conn.fetchval(_DONE, sub_id, head.seq, self.owner, job.attempt)
                else:
                    assert decision.retry is not None
                    kept = await conn.fetchval(
                        _LATER, sub_id, head.seq, self.owner, job.attempt, decision.retry.due_at
                    )
                if not kept:
                    raise LeaseLost
            deactivated = await stage.attempts.count_streaks(conn, [(row, streak)])
        await stage.attempts.announce(deactivated)
        await stage.after(job, sub, target_url, outcome, decision)
