"""The statistics cache shared by GET /status/stats and the dashboard."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

CACHE_SECONDS = 5.0
# Past the fresh period an answer is served while it is recomputed, up to this age (the
# answer says when it was computed); 10 min covers a dashboard left open or reopened.
STALE_SECONDS = 600.0


Key = tuple[int, int, uuid.UUID | None]


def _key(window: timedelta, top: int, application_id: uuid.UUID | None) -> Key:
    """One answer per window, top and application (None: all of them)."""
    return int(window.total_seconds()), top, application_id


class StatsCache:
    """Each (window, top) answer, fresh for ``ttl`` seconds, then served stale while one
    background task recomputes it (for up to ``stale`` seconds; older answers are
    recomputed before answering). Concurrent requests for the same key share one run.

    Why: on 100k attempts in the window one computation takes ~115 ms of PostgreSQL time;
    a dashboard polling every 30 s would otherwise pay it on every load.
    """

    def __init__(self, ttl: float = CACHE_SECONDS, stale: float = STALE_SECONDS) -> None:
        self._ttl = ttl
        self._stale = stale
        self._entries: dict[Key, tuple[float, dict[str, Any]]] = {}
        self._pending: dict[Key, asyncio.Task[dict[str, Any]]] = {}

    async def warm(
        self,
        window: timedelta,
        top: int,
        compute: Callable[[], Awaitable[dict[str, Any]]],
        *,
        wait: float,
    ) -> bool:
        """Compute an answer ahead of its first request, waiting up to ``wait`` seconds;
        past that it finishes in the background. True when the answer is ready."""
        key = _key(window, top, None)
        if key in self._entries:
            return True
        task = self._pending.get(key) or self._start(key, compute)
        await asyncio.wait({task}, timeout=wait)
        return key in self._entries

    async def get_or_compute(
        self,
        window: timedelta,
        top: int,
        compute: Callable[[], Awaitable[dict[str, Any]]],
        application_id: uuid.UUID | None = None,
    ) -> dict[str, Any]:
        key = _key(window, top, application_id)
        entry = self._entries.get(key)
        age = time.monotonic() - entry[0] if entry is not None else float("inf")
        if entry is not None and age <= self._ttl:
            return entry[1]
        task = self._pending.get(key) or self._start(key, compute)
        if entry is not None and age <= self._stale:
            return entry[1]
        # shield: a client that goes away does not cancel the run others are waiting on.
        return await asyncio.shield(task)

    def _start(
        self, key: Key, compute: Callable[[], Awaitable[dict[str, Any]]]
    ) -> asyncio.Task[dict[str, Any]]:
        async def run() -> dict[str, Any]:
            return await compute()

        task = asyncio.create_task(run())
        self._pending[key] = task

        def done(t: asyncio.Task[dict[str, Any]]) -> None:
            self._pending.pop(key, None)
            if t.cancelled():
                return
            if t.exception() is not None:  # the awaiting request reports it; keep the old answer
                return
            if len(self._entries) > 64:  # windows are user input: keep the cache small
                self._entries.clear()
            self._entries[key] = (time.monotonic(), t.result())

        task.add_done_callback(done)
        return task

    async def close(self) -> None:
        for task in list(self._pending.values()):
            task.cancel()
        for task in list(self._pending.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
