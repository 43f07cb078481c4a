"""The stats cache: fresh answers reused, stale ones served while one run recomputes."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from services.ingest.stats_cache import StatsCache

HOUR = timedelta(hours=1)


class Counter:
    def __init__(self) -> None:
        self.runs = 0
        self.gate = asyncio.Event()

    async def __call__(self) -> dict[str, Any]:
        self.runs += 1
        await self.gate.wait()
        return {"run": self.runs}


async def test_concurrent_cold_requests_share_one_run() -> None:
    cache, compute = StatsCache(ttl=60, stale=120), Counter()
    waiting = [asyncio.create_task(cache.get_or_compute(HOUR, 10, compute)) for _ in range(5)]
    await asyncio.sleep(0)
    compute.gate.set()
    assert [await t for t in waiting] == [{"run": 1}] * 5
    assert compute.runs == 1
    assert await cache.get_or_compute(HOUR, 10, compute) == {"run": 1}  # fresh: no new run
    assert compute.runs == 1


async def test_stale_answer_is_served_while_it_is_recomputed() -> None:
    cache, compute = StatsCache(ttl=0, stale=120), Counter()
    compute.gate.set()
    assert await cache.get_or_compute(HOUR, 10, compute) == {"run": 1}
    compute.gate.clear()
    # Stale: answered at once with the old value, one refresh started.
    assert await cache.get_or_compute(HOUR, 10, compute) == {"run": 1}
    assert await cache.get_or_compute(HOUR, 10, compute) == {"run": 1}
    await asyncio.sleep(0)
    assert compute.runs == 2
    compute.gate.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert await cache.get_or_compute(HOUR, 10, compute) in ({"run": 2}, {"run": 3})
    await cache.close()


async def test_too_old_answer_is_recomputed_before_answering() -> None:
    cache, compute = StatsCache(ttl=0, stale=0), Counter()
    compute.gate.set()
    assert await cache.get_or_compute(HOUR, 10, compute) == {"run": 1}
    assert await cache.get_or_compute(HOUR, 10, compute) == {"run": 2}


async def test_a_failed_run_keeps_the_previous_answer() -> None:
    cache = StatsCache(ttl=0, stale=0)

    async def ok() -> dict[str, Any]:
        return {"ok": True}

    async def broken() -> dict[str, Any]:
        raise RuntimeError("database down")

    assert await cache.get_or_compute(HOUR, 1, ok) == {"ok": True}
    try:
        await cache.get_or_compute(HOUR, 1, broken)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the failure must reach the caller")
    other = StatsCache(ttl=0, stale=60)
    assert await other.get_or_compute(HOUR, 1, ok) == {"ok": True}
    assert await other.get_or_compute(HOUR, 1, broken) == {"ok": True}  # stale beats error
    await other.close()


async def test_warm_waits_a_bounded_time_then_finishes_in_the_background() -> None:
    cache, compute = StatsCache(ttl=60, stale=120), Counter()
    assert await cache.warm(HOUR, 10, compute, wait=0.05) is False  # still computing
    compute.gate.set()
    # The same run, not a second one, answers the first request.
    assert await cache.get_or_compute(HOUR, 10, compute) == {"run": 1}
    assert await cache.warm(HOUR, 10, compute, wait=0.05) is True
    assert compute.runs == 1


async def test_warm_that_finishes_in_time_leaves_an_answer() -> None:
    cache, compute = StatsCache(ttl=60, stale=120), Counter()
    compute.gate.set()
    assert await cache.warm(HOUR, 10, compute, wait=5) is True
    assert await cache.get_or_compute(HOUR, 10, compute) == {"run": 1}
    assert compute.runs == 1
