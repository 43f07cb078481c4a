"""Per-subscription rate limits: at most ``rate`` deliveries start in any one-second window.

``StartRates.reserve`` gives a job the earliest start that keeps every one-second window
at ``rate`` starts or fewer (the burst is the rate), and reserves it. A job whose start
is near waits for it in memory; one whose start is further than the horizon reserves
nothing and is put aside on a retry tier (the caller's deferral: not an attempt, not a
failure), so a subscription's backlog never fills its partitions' in-flight budget and
its neighbours keep their speed.

All jobs of a subscription go to one partition (they are keyed by its id), so one
dispatcher process sees them all and a limit kept in its memory is the subscription's.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable

# A subscription's jobs wait in memory for their start for at most this long, and at
# most MAX_WAITING of them: 10 s at 5/s is 50 jobs; at 1,000/s the 500-job bound makes
# it half a second. Past that they wait on a retry tier.
HORIZON = 10.0
MAX_WAITING = 500


class StartRates:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # Reserved start times per subscription, oldest first (never decreasing).
        self._starts: dict[uuid.UUID, deque[float]] = {}

    def reserve(self, key: uuid.UUID, rate: int) -> float | None:
        """Seconds to wait before starting (0: now), with the start reserved; None when
        the start is beyond the horizon (nothing reserved: put the job aside)."""
        now = self._clock()
        starts = self._starts.get(key)
        if starts is None:
            starts = self._starts[key] = deque()
        while starts and starts[0] <= now - 1.0:
            starts.popleft()  # outside every window that is still to come
        at = now
        if starts:
            at = max(at, starts[-1])
        if len(starts) >= rate:
            at = max(at, starts[-rate] + 1.0)
        if at - now > min(HORIZON, MAX_WAITING / rate):
            if not starts:
                del self._starts[key]
            return None
        starts.append(at)
        return at - now

    def __len__(self) -> int:
        """Subscriptions with reserved starts (memory held)."""
        return len(self._starts)

    def forget_idle(self) -> None:
        """Drop subscriptions whose reservations have all passed."""
        now = self._clock()
        for key in [k for k, s in self._starts.items() if not s or s[-1] <= now - 1.0]:
            del self._starts[key]
