"""At most ``LIMIT`` failed logins a minute per client address, on ``/ui/login`` and
``/portal/login/*``; past that, 429 with ``Retry-After`` until the minute ends.

Counted in Redis (an INCR when an attempt begins, a DECR when it succeeds; keys expire
with their minute), so every ingest replica sees the same count, and a burst of
concurrent guesses is cut at the limit instead of all passing one check. Redis is an
accelerator here as everywhere (design §8): when it does not answer, each process counts
in its own memory instead, which still bounds a guesser to ``LIMIT`` a minute per process.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.ingest.errors import HookstreamError

LIMIT = 10
WINDOW = 60
# Addresses remembered in memory when Redis is down; a new minute starts afresh anyway.
_MAX_LOCAL = 10_000


class TooManyAttempts(HookstreamError):
    status_code = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "too many failed attempts: try again later",
            headers={"Retry-After": str(retry_after)},
        )


class LoginLimiter:
    def __init__(self, redis: Redis | None, topic_prefix: str) -> None:
        self._redis = redis
        self._prefix = f"hookstream:login:{topic_prefix}"
        self._local: dict[tuple[str, int], int] = {}

    def _window(self) -> tuple[int, int]:
        now = time.time()
        window = int(now // WINDOW)
        return window, max(1, int((window + 1) * WINDOW - now))

    async def _count(self, address: str, window: int, add: int) -> int:
        key = f"{self._prefix}:{address}:{window}"
        if self._redis is not None:
            try:
                if add:
                    pipe = self._redis.pipeline()
                    pipe.incrby(key, add)
                    pipe.expire(key, WINDOW * 2)
                    count, _ = await pipe.execute()
                    return int(count)
                value = await self._redis.get(key)
                return int(value or 0)
            except (RedisError, OSError):
                pass
        local_key = (address, window)
        if len(self._local) >= _MAX_LOCAL:
            self._local.clear()
        self._local[local_key] = self._local.get(local_key, 0) + add
        return self._local[local_key]

    async def begin(self, address: str) -> None:
        """Count an attempt before it is judged, and refuse it past the limit: counted
        first, so a burst of concurrent guesses cannot all pass a check made before any
        of them failed. Call ``succeeded`` when it did not fail."""
        window, retry_after = self._window()
        if await self._count(address, window, 1) > LIMIT:
            raise TooManyAttempts(retry_after)

    async def succeeded(self, address: str) -> None:
        """A successful attempt does not count against the address."""
        window, _ = self._window()
        await self._count(address, window, -1)

    async def check(self, address: str) -> None:
        """Raises TooManyAttempts when this address already failed ``LIMIT`` times."""
        window, retry_after = self._window()
        if await self._count(address, window, 0) >= LIMIT:
            raise TooManyAttempts(retry_after)
