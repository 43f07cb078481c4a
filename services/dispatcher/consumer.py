"""The dispatcher's consumer loop: both stages, one consumer, one group.

Records are fetched in offset order and each becomes a task (fan-out or delivery); tasks
finish in any order. A record's offset is *finished* when its task returned, i.e. when
everything it implies is durable (see the stages). Every 100 ms, and before partitions are
revoked or the process stops, each partition commits its first unfinished offset
(``shared.offsets``): a slow early record holds its partition's commit point back, and a
crash replays from there. At-least-once, never auto-commit (design §3).

Flow control is per partition: a partition with too many records in progress, too many
body bytes held or too many records not yet committable is paused (and the loop keeps
polling, so the consumer stays in the group); it resumes once each limit it reached is
back at half. A slow record holds its partition's commit point, not its deliveries, and
memory stays bounded.

Rebalances (eager protocol: every partition is revoked, then the new set assigned):
``on_partitions_revoked`` cancels revoked jobs that have not started their request,
waits up to ``drain_timeout`` for the rest, cancels what remains, commits what finished
and forgets the partitions. A cancelled job was not committed, so the partition's next
owner replays it. Shutdown does the same for every partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from services.dispatcher.delivery_stage import DeliveryStage, Progress
from services.dispatcher.fanout import FanOutStage
from services.dispatcher.stalls import ZombieFence
from shared.kafka import FetchPacing
from shared.logging import get_logger
from shared.loopref import LoopRef
from shared.metrics import CONSUMER_LAG, RECORD_WAIT
from shared.offsets import PartitionOffsets
from shared.records import DeliveryJob, EventRecord
from shared.topics import Topics

Header = tuple[str, bytes]

log = get_logger("dispatcher")

# Commit points are sent every 100 ms: what a crash replays is at most this much finished
# work (plus what sits behind a slow record); one small request per interval is cheap.
COMMIT_INTERVAL = 0.1
# Flow control per partition. A partition pauses when it has PARTITION_ACTIVE records in
# progress (a task each) or PARTITION_BYTES of their bodies, or PARTITION_BACKLOG records
# not yet committable; it resumes at half of each. Jobs queued behind a dead target count
# as in progress until they are deferred (LANE_PATIENCE, 5 s), so the active bound is
# generous: 4,000 tasks are ~12 MB. The backlog bound is larger still because finished
# records waiting behind a slow one cost an integer each: one record stuck for a 10 s
# timeout must not stop its partition. Against slow targets with 1 % of requests hanging
# there is always one, so this bound divided by the timeout caps a partition's rate: at
# 20,000, 2,000 records/s, where one dispatcher reads ~1,700/s a partition. Sustained
# runs of ``bench targets`` then paused partitions on it and left the dispatcher idle a
# quarter of the time. It is also the most a crash can replay (duplicates, never losses).
PARTITION_ACTIVE = 4000
PARTITION_BYTES = 16 * 1024 * 1024
PARTITION_BACKLOG = 50_000
# Events fanned out by one task: amortises the task, the ack wait and the row wait.
# Small enough that a chunk of broadcast events (1,000 subscriptions each) stays a
# reasonable publish: 32,000 jobs.
FANOUT_CHUNK = 32
_FANOUT_WAIT = RECORD_WAIT.labels("fanout")
_DELIVERY_WAIT = RECORD_WAIT.labels("delivery")
_NOT_PAUSED = (False, False, False)
_RETRY_FIRST = 0.5
_RETRY_MAX = 30.0


class Partition(PartitionOffsets):
    """One assigned partition: its offsets, plus what flow control needs."""

    __slots__ = ("bytes", "paused_for", "sent", "tp")

    def __init__(self, tp: TopicPartition) -> None:
        super().__init__()
        self.tp = tp
        self.bytes = 0
        # The limits the partition is paused for (records in progress, bytes held, records
        # not yet committable); none while it is not paused.
        self.paused_for = _NOT_PAUSED
        # Resolves once the last fan-out chunk handed to a task has sent its records.
        self.sent: asyncio.Future[None] | None = None

    @property
    def paused(self) -> bool:
        return any(self.paused_for)

    def over_limits(self) -> tuple[bool, bool, bool]:
        """Which limits the partition has reached."""
        return (
            self.unfinished >= PARTITION_ACTIVE,
            self.bytes >= PARTITION_BYTES,
            self.pending >= PARTITION_BACKLOG,
        )

    def can_resume(self) -> bool:
        """Every limit it was paused for is down to half.

        Only those: while paused nothing grows, so the others stay under their limits.
        Requiring all three at half kept a partition paused for records in progress until
        a hung request's timeout whenever the records behind that request (not yet
        committable) stood between half and the whole of their limit, which a busy
        partition reaches within one timeout: it sat idle with nothing left in progress.
        """
        active, size, backlog = self.paused_for
        return (
            (not active or self.unfinished <= PARTITION_ACTIVE // 2)
            and (not size or self.bytes <= PARTITION_BYTES // 2)
            and (not backlog or self.pending <= PARTITION_BACKLOG // 2)
        )


@dataclass(slots=True)
class Work:
    part: Partition
    offsets: list[int]  # one delivery, or a chunk of events fanned out together
    size: int
    progress: Progress | None  # cancellable until the request (or the publish) starts


class Dispatcher(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topics: Topics,
        fanout: FanOutStage,
        delivery: DeliveryStage,
        *,
        drain_timeout: float,
        fence: ZombieFence | None = None,
        fetch_batch_wait_ms: int = 0,
    ) -> None:
        self._consumer = consumer
        self._fence = fence
        self._topics = topics
        self._fanout = fanout
        self._delivery = delivery
        self._drain_timeout = drain_timeout
        self._parts: dict[TopicPartition, Partition] = {}
        self._tasks: dict[asyncio.Task[None], Work] = {}
        self._commit_lock = asyncio.Lock()
        self._loop = LoopRef()
        self._pacing = FetchPacing(consumer, fetch_batch_wait_ms)

    @property
    def jobs_in_progress(self) -> int:
        """Tasks alive: deliveries and fan-out chunks, from fetched to recorded."""
        return len(self._tasks)

    # --- main loop ----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._consumer.subscribe([self._topics.events, self._topics.deliveries], listener=self)
        committer = asyncio.create_task(self._commit_loop(), name="dispatcher-commit")
        try:
            await self._fetch_loop(stop)
        finally:
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            in_flight = len(self._tasks)
            abandoned = await self._drain(None)
            await self._commit(None)
            log.info("drained", in_flight=in_flight, abandoned=abandoned)

    async def _fetch_loop(self, stop: asyncio.Event) -> None:
        consumer = self._consumer
        events_topic = self._topics.events
        backoff = _RETRY_FIRST
        while not stop.is_set():
            # Awaited inline, not in a task of its own: the records are then processed
            # in the same step getmany returns in, so no rebalance callback can run in
            # between and every record belongs to the assignment it was fetched under.
            # (A poll blocks while the group rebalances, so a stop signal then waits
            # for the rebalance to end; a second signal exits at once.)
            try:
                batches = await consumer.getmany(timeout_ms=100)
            except KafkaError as exc:
                log.warning("fetch failed", error=f"{type(exc).__name__}: {exc}", retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RETRY_MAX)
                continue
            backoff = _RETRY_FIRST
            self._pacing.fetched(sum(map(len, batches.values())))
            now_ms = time.time() * 1000
            for tp, records in batches.items():
                part = self._parts.get(tp)
                if part is None:
                    part = self._parts[tp] = Partition(tp)
                fresh = [r for r in records if part.start(r.offset)]
                waited = _FANOUT_WAIT if tp.topic == events_topic else _DELIVERY_WAIT
                for r in fresh:
                    waited.observe((now_ms - r.timestamp) / 1000)
                if tp.topic == events_topic:
                    for start in range(0, len(fresh), FANOUT_CHUNK):
                        self._submit_events(part, fresh[start : start + FANOUT_CHUNK])
                else:
                    for record in fresh:
                        self._submit_delivery(part, record.offset, record.value, record.headers)
                if not part.paused and any(over := part.over_limits()):
                    consumer.pause(tp)
                    part.paused_for = over
            if batches:
                # getmany answers from its buffer without yielding, so one step spawns
                # at most one poll's tasks (max_poll_records) only if the loop yields
                # here. Without it a backlog's fetch ran through the whole buffer in one
                # step, up to 4,000 records a partition, and the tasks' first steps then
                # ran together: the loop answered nothing for up to 300 ms and the
                # in-flight bound shrank on it (``bench targets``: longest stall of the
                # dispatcher's loop 259-315 ms before, 143-190 ms after).
                await asyncio.sleep(0)

    def _submit_delivery(
        self, part: Partition, offset: int, value: bytes | None, headers: Sequence[Header]
    ) -> None:
        try:
            job = DeliveryJob.decode(value, headers)
        except Exception as exc:  # RecordError and friends: a poison record
            self._poison(part, offset, exc)
            return
        progress = Progress()
        # Taken here, in offset order: an ordered subscription's jobs are queued in it.
        ticket = self._delivery.ticket(job)
        # Where the job was read from: a retry's claim on its attempt (claims.py).
        source = f"{part.tp.partition}:{offset}"
        # A partial, not a lambda and its four closure cells; with ``run`` returning
        # ``_run``'s coroutine itself, a job in progress holds ~4.3 KB instead of ~5.0
        # (tracemalloc over a backlog against slow targets, ~15,000 jobs in progress).
        self._spawn(
            functools.partial(self._delivery.run, job, progress, ticket, source),
            Work(part, [offset], len(job.body), progress),
        )

    def _submit_events(self, part: Partition, records: Sequence[Any]) -> None:
        """Events of one partition are fanned out a chunk at a time: one task, one wait
        for the broker's acks and one for the event rows, for up to FANOUT_CHUNK events."""
        events: list[EventRecord] = []
        offsets: list[int] = []
        for record in records:
            try:
                events.append(EventRecord.decode(record.value, record.headers))
            except Exception as exc:
                self._poison(part, record.offset, exc)
                continue
            offsets.append(record.offset)
        if events:
            size = sum(len(e.body) for e in events)
            progress = Progress()
            # Chunks of a partition send their jobs in offset order, whatever order their
            # lookups finish in: an ordered subscription's jobs keep the events' order.
            after, part.sent = part.sent, self._loop().create_future()
            turn = (after, part.sent)
            run = self._fanout.run
            self._spawn(lambda: run(events, progress, turn), Work(part, offsets, size, progress))

    def _poison(self, part: Partition, offset: int, exc: Exception) -> None:
        log.error(
            "poison record skipped",
            topic=part.tp.topic,
            partition=part.tp.partition,
            offset=offset,
            error=f"{type(exc).__name__}: {exc}",
        )
        part.finish(offset)

    def _spawn(self, make: Callable[[], Coroutine[Any, Any, None]], work: Work) -> None:
        work.part.bytes += work.size
        task = self._loop().create_task(self._until_done(make, work))
        self._tasks[task] = work
        task.add_done_callback(self._on_done)

    async def _until_done(self, make: Callable[[], Coroutine[Any, Any, None]], work: Work) -> None:
        """Run a stage; an unexpected error (database or broker away) retries the whole
        record after a pause, so it is neither lost nor blocking forever once the
        dependency is back."""
        backoff = _RETRY_FIRST
        while True:
            try:
                await make()
                return
            except Exception as exc:
                log.error(
                    "record failed, will retry",
                    topic=work.part.tp.topic,
                    partition=work.part.tp.partition,
                    offsets=work.offsets[:10],
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in=backoff,
                    exc_info=exc,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RETRY_MAX)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        work = self._tasks.pop(task)
        part = work.part
        part.bytes -= work.size
        if task.cancelled():
            return
        for offset in work.offsets:
            part.finish(offset)
        if part.paused and part.can_resume() and self._parts.get(part.tp) is part:
            part.paused_for = _NOT_PAUSED
            with contextlib.suppress(IllegalStateError):
                self._consumer.resume(part.tp)

    # --- commits ------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_INTERVAL)
            await self._commit(None)
            self._report_lag()

    async def _commit(self, tps: Iterable[TopicPartition] | None) -> None:
        parts = self._parts.values() if tps is None else [self._parts[tp] for tp in tps]
        due = {p.tp: point for p in parts if (point := p.due_commit()) is not None}
        if not due:
            return
        async with self._commit_lock:
            try:
                await self._consumer.commit(due)
            except (CommitFailedError, IllegalStateError) as exc:
                # The group is rebalancing: whoever owns these partitions next replays
                # from the last successful commit.
                log.info("commit skipped", reason=f"{type(exc).__name__}: {exc}")
                return
            except KafkaError as exc:
                log.warning("commit failed", error=f"{type(exc).__name__}: {exc}")
                return
        for tp, point in due.items():
            part = self._parts.get(tp)
            if part is not None and (part.committed is None or point > part.committed):
                part.committed = point

    def _report_lag(self) -> None:
        lag: dict[str, int] = {}
        for tp, part in self._parts.items():
            high = self._consumer.highwater(tp)
            point = part.commit_point
            if high is not None and point is not None:
                lag[tp.topic] = lag.get(tp.topic, 0) + max(high - point, 0)
        for topic, value in lag.items():
            CONSUMER_LAG.labels(topic).set(value)

    # --- rebalance and shutdown ---------------------------------------------------

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        mine = [tp for tp in revoked if tp in self._parts]
        if not mine:
            return
        started = time.monotonic()
        abandoned = 0
        try:
            abandoned = await self._drain(set(mine))
            await self._commit(mine)
        finally:
            for tp in mine:
                self._parts.pop(tp, None)
        log.info(
            "partitions revoked",
            partitions=len(mine),
            abandoned=abandoned,
            took_ms=int((time.monotonic() - started) * 1000),
        )

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self._fence is not None:
            self._fence.renewed()
        # Partition state is created when its first record arrives (always at the
        # committed position), so there is nothing else to set up here.
        names = sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)
        log.info("partitions assigned", partitions=names)

    async def _drain(self, tps: set[TopicPartition] | None) -> int:
        """Finish or abandon the work of ``tps`` (None: all). Returns how many were
        abandoned while their request was in flight."""
        tasks = [t for t, w in self._tasks.items() if tps is None or w.part.tp in tps]
        if not tasks:
            return 0
        waiting: list[asyncio.Task[None]] = []
        for task in tasks:
            progress = self._tasks[task].progress
            if progress is not None and not progress.sending:
                task.cancel()  # nothing reached the target yet: replaying it is free
            else:
                waiting.append(task)
        pending: set[asyncio.Task[None]] = set()
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=self._drain_timeout)
            for task in pending:
                task.cancel()
        await asyncio.wait(tasks)
        return len(pending)
