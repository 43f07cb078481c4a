"""Event-loop stalls: when this process, not the target, made a request time out.

A dispatcher stopped by SIGSTOP (or starved of CPU, or swapped out) keeps its requests'
deadlines running on the monotonic clock; when it runs again every in-flight request
"times out" at once. Counted against the targets, those timeouts would record failed
attempts on healthy endpoints and could open their circuit breakers. A small task ticks
every ``tick`` seconds; a gap much longer than a tick is a stall, and the delivery stage
asks how much of an attempt's time fell inside one.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from shared.logging import get_logger

log = get_logger("dispatcher.stalls")

# Longer than any GC pause or busy batch seen on the hot path (tens of ms), far shorter
# than a delivery timeout (10 s by default).
STALL_THRESHOLD = 1.0
TICK = 0.1
# How often a job held back by the zombie fence looks again.
FENCE_POLL = 0.1


class LoopStalls:
    def __init__(
        self,
        *,
        tick: float = TICK,
        threshold: float = STALL_THRESHOLD,
        clock: Callable[[], float] = time.monotonic,
        keep: int = 64,
    ) -> None:
        self._tick = tick
        self._threshold = threshold
        self._clock = clock
        self._last = clock()
        self._gaps: deque[tuple[float, float]] = deque(maxlen=keep)

    def now(self) -> float:
        return self._clock()

    def ticked(self) -> None:
        now = self._clock()
        if now - self._last > self._threshold:
            self._gaps.append((self._last, now))
        self._last = now

    def _gaps_until(self, end: float) -> list[tuple[float, float]]:
        """The stalls seen, oldest first, plus one under way until ``end`` that the
        ticking task has not seen yet: after a SIGCONT the requests' timeouts may fire
        before its own sleep returns."""
        gaps = list(self._gaps)
        if end - self._last > self._threshold:
            gaps.append((self._last, end))
        return gaps

    def stalled_within(self, start: float, end: float) -> float:
        """Seconds of ``[start, end]`` (this object's clock) the loop did not run."""
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in self._gaps_until(end))

    def last_gap_over(self, seconds: float) -> tuple[float, float] | None:
        """The latest stall longer than ``seconds`` as (start, end); None if none."""
        for start, end in reversed(self._gaps_until(self._clock())):
            if end - start > seconds:
                return start, end
        return None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            self.ticked()


class ZombieFence:
    """No new requests from a process that may have been evicted from its group.

    A dispatcher stalled past the consumer's session timeout has had its partitions given
    to another member, which replays every job not yet committed. Until this process
    has been assigned partitions again (or ``hold`` seconds passed with no rebalance, so
    it was not evicted after all), jobs wait before their request instead of sending
    it: they are still cancellable, so the revocation that follows drops them for free
    instead of delivering them a second time.
    """

    def __init__(self, stalls: LoopStalls, session_timeout: float, hold: float = 30.0) -> None:
        self._stalls = stalls
        self._session_timeout = session_timeout
        self._hold = hold
        self._renewed_at = float("-inf")
        self._announced: tuple[float, float] | None = None

    def renewed(self) -> None:
        """Partitions assigned: whatever this process holds now is its own."""
        self._renewed_at = self._stalls.now()

    async def wait(self) -> None:
        """Return once this process may send again (at once, almost always)."""
        # Polled: the fence also lifts by time alone, and only a process that just woke
        # from a long stall ever waits here.
        while self.fenced():  # noqa: ASYNC110
            await asyncio.sleep(FENCE_POLL)

    def fenced(self) -> bool:
        gap = self._stalls.last_gap_over(self._session_timeout)
        if gap is None:
            return False
        started, ended = gap
        fenced = ended > self._renewed_at and self._stalls.now() - ended < self._hold
        if fenced and (self._announced is None or self._announced[0] != started):
            self._announced = gap
            log.warning(
                "stalled past the session timeout: no new requests until partitions are "
                "assigned again",
                stalled_s=round(ended - started, 1),
            )
        return fenced
