"""Redis key counts. Idempotency and subscription-cache keys expire by their own TTL, so the
janitor deletes nothing there; it reports how many exist, which shows a TTL gone missing.

Redis is an accelerator (design §8): when it is down the janitor logs a warning and the
rest of its run goes on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.logging import get_logger

log = get_logger("janitor.cache_keys")

KEY_PREFIXES = {"idempotency": "hookstream:idem:", "subscription_cache": "hookstream:subs:"}

# SCAN walks the whole keyspace whatever MATCH says. COUNT 1000 makes each call examine
# about 1,000 slots (well under a millisecond of Redis time), and 100 calls per prefix cap
# a run at ~100,000 keys examined; past that the count is reported as a lower bound.
SCAN_COUNT = 1000
MAX_SCAN_CALLS = 100
# The whole census gives up after this long (the client's own socket timeout is 0.5 s).
TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class KeyCount:
    count: int
    # False when the scan stopped at MAX_SCAN_CALLS: ``count`` is then a lower bound.
    complete: bool


async def count_keys(
    redis: Redis,
    prefixes: dict[str, str] | None = None,
    *,
    scan_count: int = SCAN_COUNT,
    max_calls: int = MAX_SCAN_CALLS,
) -> dict[str, KeyCount] | None:
    """Keys per prefix, or None when Redis does not answer."""
    try:
        async with asyncio.timeout(TIMEOUT_S):
            return {
                name: await _count(redis, prefix, scan_count, max_calls)
                for name, prefix in (prefixes or KEY_PREFIXES).items()
            }
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("redis unavailable, key counts skipped", error=f"{type(exc).__name__}: {exc}")
        return None


async def _count(redis: Redis, prefix: str, scan_count: int, max_calls: int) -> KeyCount:
    # SCAN may return a key twice while the keyspace is rehashing; a set counts it once.
    seen: set[bytes | str] = set()
    cursor = 0
    for _ in range(max_calls):
        cursor, keys = await redis.scan(cursor, match=_glob_escape(prefix) + "*", count=scan_count)
        seen.update(keys)
        if cursor == 0:
            return KeyCount(len(seen), complete=True)
    return KeyCount(len(seen), complete=False)


def _glob_escape(prefix: str) -> str:
    for ch in "\\*?[]":
        prefix = prefix.replace(ch, "\\" + ch)
    return prefix
