"""Bounded concurrency for outbound requests: a global bound and one per target.

The per-target slot is taken first, then a global one. A target that is slow or dead
therefore holds at most ``per_target`` global slots; its other jobs wait on its own
semaphore without blocking anyone else's deliveries; when the target is stalled (nothing
finished for ``patience``) they give up, and the caller defers them so they stop holding
their partitions' flow-control budget.
"""

from __future__ import annotations

import asyncio
import time


class _Lane:
    __slots__ = ("last_done", "semaphore", "users")

    def __init__(self, limit: int) -> None:
        self.semaphore = asyncio.Semaphore(limit)
        self.users = 0  # holders and waiters; the lane is dropped at zero
        self.last_done = time.monotonic()  # when a slot was last given back


class TargetLimits:
    def __init__(self, total: int, per_target: int) -> None:
        self._total = asyncio.Semaphore(total)
        self._per_target = per_target
        self._lanes: dict[str, _Lane] = {}
        self.in_flight = 0  # holders of a global slot

    async def acquire(self, target: str, patience: float | None = None) -> bool:
        """Take a slot of ``target`` and a global one. False (holding nothing) when the
        target is stalled: this job waited ``patience`` seconds and none of the target's
        requests finished meanwhile, so the caller should put the job aside rather than
        queue behind a dead endpoint. A busy target that keeps answering is waited for,
        however long its queue."""
        lane = self._lanes.get(target)
        if lane is None:
            lane = self._lanes[target] = _Lane(self._per_target)
        lane.users += 1
        try:
            if patience is None or not lane.semaphore.locked():
                await lane.semaphore.acquire()
            elif not await self._wait_while_progressing(lane, patience):
                self._leave(target, lane)
                return False
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
        return True

    @staticmethod
    async def _wait_while_progressing(lane: _Lane, patience: float) -> bool:
        while True:
            try:
                async with asyncio.timeout(patience):
                    await lane.semaphore.acquire()
                return True
            except TimeoutError:
                if time.monotonic() - lane.last_done >= patience:
                    return False

    def release(self, target: str) -> None:
        self.in_flight -= 1
        self._total.release()
        lane = self._lanes[target]
        lane.last_done = time.monotonic()
        lane.semaphore.release()
        self._leave(target, lane)

    def _leave(self, target: str, lane: _Lane) -> None:
        lane.users -= 1
        if lane.users == 0:
            del self._lanes[target]

    def active_targets(self) -> int:
        return len(self._lanes)
