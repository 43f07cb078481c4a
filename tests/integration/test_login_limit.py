"""The per-address limit on failed logins, in real Redis, on a clock the test moves.

The HTTP answers (429 page, Retry-After, the right key refused during the lock) are in
tests/browser/test_ui_auth.py; here, what a minute cannot show there: the lock lifts
when the window ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from redis.asyncio import Redis

from services.ingest import login_limit
from services.ingest.login_limit import LIMIT, WINDOW, LoginLimiter, TooManyAttempts
from shared.redis import make_redis
from shared.settings import Settings
from tests.support.procs import free_port

# Five seconds into a minute (a multiple of WINDOW since the epoch).
START = 1_800_000_000 // WINDOW * WINDOW + 5.0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [START]
    monkeypatch.setattr(login_limit, "time", SimpleNamespace(time=lambda: now[0]))
    return now


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = make_redis(settings)
    yield client
    await client.aclose()


async def test_the_lock_lifts_when_the_window_ends(
    redis: Redis, settings: Settings, clock: list[float]
) -> None:
    limiter = LoginLimiter(redis, settings.topic_prefix)
    for _ in range(LIMIT):
        await limiter.check("192.0.2.1")
        await limiter.begin("192.0.2.1")
    with pytest.raises(TooManyAttempts) as refused:
        await limiter.check("192.0.2.1")
    assert refused.value.status_code == 429
    assert refused.value.headers == {"Retry-After": str(WINDOW - 5)}
    await limiter.check("192.0.2.2")  # per address
    # A second replica sees the same count.
    with pytest.raises(TooManyAttempts):
        await LoginLimiter(redis, settings.topic_prefix).check("192.0.2.1")
    clock[0] = START + WINDOW - 6
    with pytest.raises(TooManyAttempts) as refused:
        await limiter.check("192.0.2.1")
    assert refused.value.headers == {"Retry-After": "1"}
    clock[0] = START + WINDOW - 5  # the next minute
    await limiter.check("192.0.2.1")


async def test_without_redis_each_process_counts_alone(clock: list[float]) -> None:
    # Nothing listens on this port: every Redis call fails fast.
    down = Redis.from_url(
        f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=0.2, socket_timeout=0.2
    )
    try:
        limiter = LoginLimiter(down, "test")
        for _ in range(LIMIT):
            await limiter.begin("192.0.2.3")
        with pytest.raises(TooManyAttempts):
            await limiter.check("192.0.2.3")
        clock[0] = START + WINDOW
        await limiter.check("192.0.2.3")
    finally:
        await down.aclose()


async def test_a_concurrent_burst_is_cut_at_the_limit_and_successes_do_not_count(
    redis: Redis, settings: Settings, clock: list[float]
) -> None:
    limiter = LoginLimiter(redis, settings.topic_prefix)
    results = await asyncio.gather(
        *(limiter.begin("192.0.2.9") for _ in range(LIMIT * 2)), return_exceptions=True
    )
    assert sum(r is None for r in results) == LIMIT
    assert all(isinstance(r, TooManyAttempts) for r in results if r is not None)
    clock[0] = START + WINDOW  # a new minute
    for _ in range(LIMIT * 2):  # attempts that succeed give their count back
        await limiter.begin("192.0.2.9")
        await limiter.succeeded("192.0.2.9")
    await limiter.check("192.0.2.9")
