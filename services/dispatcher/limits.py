"""Bounded concurrency for outbound requests: a global bound and one per target.

The per-target slot is taken first, then a global one. A target that is slow or dead
therefore holds at most ``per_target`` global slots; its other jobs wait in its own lane
without blocking anyone else's deliveries. When a target is stalled (nothing finished
for ``patience`` while jobs wait), its waiting jobs are turned away, and the caller defers
them so they stop holding their partitions' flow-control budget.

A lane is a small FIFO semaphore of its own rather than ``asyncio.Semaphore`` under a
timeout: one watchdog timer per stalled-looking lane instead of a timer per waiting job
(with every job waiting on one busy sink, the per-job timeouts cost 5 % of the CPU).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque


class _Lane:
    __slots__ = ("free", "last_done", "users", "waiters", "watchdog")

    def __init__(self, limit: int) -> None:
        self.free = limit
        self.waiters: deque[asyncio.Future[bool]] = deque()
        self.users = 0  # holders and waiters; the lane is dropped at zero
        self.last_done = time.monotonic()  # when a slot was last given back
        self.watchdog: asyncio.TimerHandle | None = None


class TargetLimits:
    def __init__(self, total: int, per_target: int, patience: float | None = None) -> None:
        self._total = asyncio.Semaphore(total)
        self._per_target = per_target
        self._patience = patience
        self._lanes: dict[str, _Lane] = {}
        self.in_flight = 0  # holders of a global slot

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
            waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
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
            await self._total.acquire()
        except BaseException:
            self._give_back(lane)
            self._leave(target, lane)
            raise
        self.in_flight += 1
        return True

    def release(self, target: str) -> None:
        self.in_flight -= 1
        self._total.release()
        lane = self._lanes[target]
        lane.last_done = time.monotonic()
        self._give_back(lane)
        self._leave(target, lane)

    def active_targets(self) -> int:
        return len(self._lanes)

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
        lane.watchdog = asyncio.get_running_loop().call_at(
            asyncio.get_running_loop().time() + max(due - time.monotonic(), 0.0),
            self._check,
            lane,
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
