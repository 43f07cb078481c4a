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

# Longer than any GC pause or busy batch seen on the hot path (tens of ms), far shorter
# than a delivery timeout (10 s by default).
STALL_THRESHOLD = 1.0
TICK = 0.1


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

    def stalled_within(self, start: float, end: float) -> float:
        """Seconds of ``[start, end]`` (this object's clock) the loop did not run.

        Includes a stall the ticking task has not seen yet: after a SIGCONT the
        requests' timeouts may fire before its own sleep returns.
        """
        gaps = list(self._gaps)
        if end - self._last > self._threshold:
            gaps.append((self._last, end))
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in gaps)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            self.ticked()
