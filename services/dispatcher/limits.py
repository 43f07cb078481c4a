"""Bounded concurrency for outbound requests: a global bound and one per target.

The per-target slot is taken first, then a global one. A target that is slow or dead
therefore holds at most ``per_target`` global slots; its other jobs wait on its own
semaphore without blocking anyone else's deliveries.
"""

from __future__ import annotations

import asyncio


class _Lane:
    __slots__ = ("semaphore", "users")

    def __init__(self, limit: int) -> None:
        self.semaphore = asyncio.Semaphore(limit)
        self.users = 0  # holders and waiters; the lane is dropped at zero


class TargetLimits:
    def __init__(self, total: int, per_target: int) -> None:
        self._total = asyncio.Semaphore(total)
        self._per_target = per_target
        self._lanes: dict[str, _Lane] = {}
        self.in_flight = 0  # holders of a global slot

    async def acquire(self, target: str) -> None:
        lane = self._lanes.get(target)
        if lane is None:
            lane = self._lanes[target] = _Lane(self._per_target)
        lane.users += 1
        try:
            await lane.semaphore.acquire()
        except BaseException:
            self._leave(target, lane)
            raise
        try:
            await self._total.acquire()
        except BaseException:
            lane.semaphore.release()
            self._leave(target, lane)
            raise
        self.in_flight += 1

    def release(self, target: str) -> None:
        self.in_flight -= 1
        self._total.release()
        lane = self._lanes[target]
        lane.semaphore.release()
        self._leave(target, lane)

    def _leave(self, target: str, lane: _Lane) -> None:
        lane.users -= 1
        if lane.users == 0:
            del self._lanes[target]

    def active_targets(self) -> int:
        return len(self._lanes)
