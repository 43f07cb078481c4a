"""Bounded concurrency for outbound requests: a global bound and one per target.

The per-target slot is taken first, then a global one. A target that is slow or dead
therefore holds at most ``per_target`` global slots; its other jobs wait in its own lane
without blocking anyone else's deliveries. When a target is stalled (nothing finished
for ``patience`` while jobs wait), its waiting jobs are turned away, and the caller defers
them so they stop holding their partitions' flow-control budget.

A lane is a small FIFO semaphore of its own rather than ``asyncio.Semaphore`` under a
timeout: one watchdog timer per stalled-looking lane instead of a timer per waiting job
(with every job waiting on one busy sink, the per-job timeouts cost 5 % of the CPU).

The global bound adapts to this process's event loop (``LoopLimit``). Slow targets need
thousands of requests open at once, and cost the loop almost nothing while they wait;
fast targets keep the loop busy, and then every request admitted beyond what the loop can
drive only queues inside it: measured with 1,000 instant targets and 4,096 admitted, the
attempts took 1.3 s (median) although the targets answered at once, requests timed out
by our own doing, and the loop answered nothing else for up to a second. So the bound
shrinks while the loop lags and grows while it keeps up and the bound is what holds jobs
back, between a floor and ``HOOKSTREAM_MAX_IN_FLIGHT``. Jobs held back wait before their
request, where waiting costs a future and no timeout runs.

How much lag is too much depends on what the requests are waiting for. Lag is time a
request spends queued behind other callbacks; against a 2 ms answer 25 ms is a request
made ten times slower by ourselves, against a 180 ms answer it is a seventh. So the lag
the bound tolerates is a share (``LAG_SHARE``) of the typical attempt's duration, between
``LAG_HIGH`` (instant targets: the bound as before) and ``LAG_CEILING``. Measured with
1,000 slow targets (median 150 ms, ``bench.targets``, two alternating pairs): the fixed
25 ms held the bound near 1,000 and delivered 1,810 and 2,182/s; with 50 ms the bound
held ~2,400 and delivered 2,822 and 2,705/s, at 354 instead of 430 to 499 µs of CPU per
delivery (a busier loop does more per turn), against 3,230 and 3,550/s instant.

Against slow targets the bound also rides out a lone late tick and grows twice as fast.
A slow run's lone late ticks are garbage collections (young ones of 20-100 ms, an older
one of ~230 ms, with tens of thousands of requests and queued jobs alive) and they
shrank the bound a fifth each; after the burst of a backlog's first fetches it then
took ~2 s to grow back, full all the while with the loop mostly idle. Three alternating
pairs of slow runs (``bench.targets``, one shape at a time): 6,133-6,333 deliveries/s
against 5,419-5,917/s, at less CPU per delivery. Instant targets keep the bound as it
was: there the same change held twice the requests in flight (~400 against ~200) for no
gain, and requests queued in our own loop are what the bound is for.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from shared.loopref import LoopRef

# The loop's lag is sampled every TICK: a timer's lateness is how long a callback waits
# behind others, i.e. what each request in flight pays at every step it takes.
TICK = 0.1
# Above LAG_HIGH the bound shrinks; below LAG_LOW, and only while it is full, it grows.
# Between the two it holds, so one GC pause or one large fetch does not make it swing.
# Both are the marks for instant targets; slower attempts raise them (LAG_SHARE).
LAG_HIGH = 0.025
LAG_LOW = 0.010
# The lag tolerated is this share of the typical attempt's duration, up to LAG_CEILING:
# beyond it the loop answers its health checks, commits and heartbeats too late.
LAG_SHARE = 0.25
LAG_CEILING = 0.050
# Attempt durations sampled per TICK (a median of more says nothing new), and the weight
# of each tick's median in the typical duration: a few seconds of memory.
DURATION_SAMPLES = 256
DURATION_WEIGHT = 0.2
# The least the bound ever falls to: enough for a few slow targets to keep every
# partition moving however busy the loop is.
FLOOR = 64
# Where it starts: a burst at start-up reaches the ceiling in under two seconds if the
# loop keeps up, instead of the loop drowning first and shrinking back.
START = 512
# Growth per tick while the bound binds and the loop keeps up: an eighth, a quarter
# against slow targets (attempts slow enough to raise the lag tolerated past LAG_HIGH).
GROWTH = 8
GROWTH_SLOW = 4


@dataclass(slots=True)
class LoopLimit:
    """Additive-increase/multiplicative-decrease of the global bound on event-loop lag
    (pure: the caller measures). Growth is multiplicative too (``GROWTH``) so that slow
    targets reach thousands in flight within seconds."""

    ceiling: int
    floor: int = FLOOR
    limit: int = 0
    lagged: bool = False  # whether the previous sample was over its mark

    def __post_init__(self) -> None:
        self.floor = min(self.floor, self.ceiling)
        self.limit = self.limit or min(self.ceiling, START)

    def update(self, lag: float, full: bool, attempt: float = 0.0) -> int:
        """One lag sample; ``attempt`` is the typical attempt's duration (s) now."""
        high = min(max(LAG_SHARE * attempt, LAG_HIGH), LAG_CEILING)
        slow = high > LAG_HIGH
        lagged, self.lagged = self.lagged, lag > high
        if lag > high:
            if lagged or not slow:  # slow targets: a lone late tick is one pause
                self.limit = max(self.floor, int(self.limit * 0.8))
        elif lag < high * (LAG_LOW / LAG_HIGH) and full:
            step = self.limit // (GROWTH_SLOW if slow else GROWTH)
            self.limit = min(self.ceiling, self.limit + max(step, 8))
        return self.limit


class _Gate:
    """The global bound: a semaphore whose size can change, and whose waiters are
    admitted round-robin across their targets (FIFO within one target). Lowering it
    revokes nothing; it only stops admitting until enough holders are done.

    Round-robin, not FIFO, because jobs arrive in bursts per target: one fetch of a
    partition carries a dozen jobs for each of its targets, and admitted in arrival
    order they all go at once, each on a connection of its own. Taking turns spreads
    the bound over the targets that wait, so a target holds about its share of it and
    keeps that many connections. Measured with 1,000 targets (``bench.targets``, 36,000
    jobs): slow ones saw 6,100-7,600 connections with FIFO and 3,500-3,800 with turns,
    instant ones 1,950 and 1,200-1,300. A target alone still gets the whole bound.
    """

    __slots__ = ("held", "limit", "loop", "turns", "waiters")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.loop = LoopRef()
        self.held = 0
        # Per target, its waiters in arrival order; ``turns`` the targets waiting, in
        # the order they are served.
        self.waiters: dict[str, deque[asyncio.Future[None]]] = {}
        self.turns: deque[str] = deque()

    async def acquire(self, target: str) -> None:
        if self.held < self.limit and not self.waiters:
            self.held += 1
            return
        waiter: asyncio.Future[None] = self.loop().create_future()
        queue = self.waiters.get(target)
        if queue is None:
            queue = self.waiters[target] = deque()
            self.turns.append(target)
        queue.append(waiter)
        self._admit()  # skips waiters cancelled meanwhile (left in place: removal is O(n))
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over as we were cancelled
            raise

    def release(self) -> None:
        self.held -= 1
        self._admit()

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._admit()

    def _admit(self) -> None:
        turns, waiters = self.turns, self.waiters
        while turns and self.held < self.limit:
            target = turns.popleft()
            queue = waiters[target]
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    self.held += 1
                    waiter.set_result(None)
                    break
            if queue:
                turns.append(target)  # its next waiter goes after everyone else's
            else:
                del waiters[target]


class _Lane:
    __slots__ = ("free", "last_done", "users", "waiters", "watchdog")

    def __init__(self, limit: int) -> None:
        self.free = limit
        self.waiters: deque[asyncio.Future[bool]] = deque()
        self.users = 0  # holders and waiters; the lane is dropped at zero
        self.last_done = time.monotonic()  # when a slot was last given back
        self.watchdog: asyncio.TimerHandle | None = None


class TargetLimits:
    def __init__(
        self,
        total: int,
        per_target: int,
        patience: float | None = None,
        *,
        adaptive: bool = False,
    ) -> None:
        self._loop_limit = LoopLimit(total) if adaptive else None
        self._total = _Gate(self._loop_limit.limit if self._loop_limit else total)
        self._per_target = per_target
        self._patience = patience
        self._lanes: dict[str, _Lane] = {}
        self.in_flight = 0  # holders of a global slot
        # Attempt durations since the last tick, and their smoothed median (s).
        self._durations: list[float] = []
        self.typical_attempt = 0.0

    async def acquire(self, target: str) -> bool:
        """Take a slot of ``target`` and a global one. False (holding nothing) when the
        target stalled while this job waited: it is dead or hung, and the job should be
        put aside. A busy target that keeps answering is waited for, however long."""
        lane = self._lanes.get(target)
        if lane is None:
            lane = self._lanes[target] = _Lane(self._per_target)
        lane.users += 1
        if lane.free > 0:
            lane.free -= 1
        else:
            waiter: asyncio.Future[bool] = self._total.loop().create_future()
            lane.waiters.append(waiter)
            self._watch(lane)
            try:
                got = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.result():
                    self._give_back(lane)  # the slot was handed over as we were cancelled
                self._leave(target, lane)
                raise
            if not got:
                self._leave(target, lane)
                return False
        try:
            await self._total.acquire(target)
        except BaseException:
            self._give_back(lane)
            self._leave(target, lane)
            raise
        self.in_flight += 1
        return True

    def release(self, target: str, took: float | None = None) -> None:
        """Give back ``target``'s slot; ``took`` is the request's duration, if one ran."""
        if took is not None and len(self._durations) < DURATION_SAMPLES:
            self._durations.append(took)
        self.in_flight -= 1
        self._total.release()
        lane = self._lanes[target]
        lane.last_done = time.monotonic()
        self._give_back(lane)
        self._leave(target, lane)

    def active_targets(self) -> int:
        return len(self._lanes)

    @property
    def limit(self) -> int:
        """The global bound now (HOOKSTREAM_MAX_IN_FLIGHT unless adaptive)."""
        return self._total.limit

    def adapt(self, lag: float) -> int:
        """Feed one lag sample to the adaptive bound; returns the bound."""
        if self._loop_limit is None:
            return self._total.limit
        if self._durations:
            # The median: 1 % of requests hanging for a 10 s timeout must not count.
            median = statistics.median(self._durations)
            self._durations.clear()
            typical = self.typical_attempt
            self.typical_attempt = (
                median if typical == 0 else typical + DURATION_WEIGHT * (median - typical)
            )
        full = bool(self._total.waiters) or self._total.held >= self._total.limit
        self._total.resize(self._loop_limit.update(lag, full, self.typical_attempt))
        return self._total.limit

    async def run(self, on_tick: Callable[[int], object] | None = None) -> None:
        """Sample the loop's lag every TICK and adapt the bound, until cancelled;
        ``on_tick`` is then told the requests in flight."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + TICK
            await asyncio.sleep(TICK)
            self.adapt(max(loop.time() - due, 0.0))
            if on_tick is not None:
                on_tick(self.in_flight)

    def _give_back(self, lane: _Lane) -> None:
        """Hand the slot to the first live waiter, or make it free."""
        while lane.waiters:
            waiter = lane.waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        lane.free += 1

    def _leave(self, target: str, lane: _Lane) -> None:
        lane.users -= 1
        if lane.users == 0:
            if lane.watchdog is not None:
                lane.watchdog.cancel()
            del self._lanes[target]

    def _watch(self, lane: _Lane) -> None:
        if self._patience is None or lane.watchdog is not None:
            return
        due = lane.last_done + self._patience
        lane.watchdog = self._total.loop().call_later(
            max(due - time.monotonic(), 0.0), self._check, lane
        )

    def _check(self, lane: _Lane) -> None:
        lane.watchdog = None
        assert self._patience is not None
        if not lane.waiters:
            return
        if time.monotonic() - lane.last_done >= self._patience:
            # Stalled: nothing finished for a whole patience. Turn every waiter away.
            while lane.waiters:
                waiter = lane.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(False)
            return
        self._watch(lane)
