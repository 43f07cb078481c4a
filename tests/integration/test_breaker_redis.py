"""The circuit breaker shared through the real Redis: two instances stand for two processes."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from shared.breaker import (
    CLOSED,
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    RedisBreakerStore,
    breaker_key,
    decide,
    observe,
)
from shared.redis import make_redis
from shared.settings import Settings
from tests.support.procs import free_port

CONFIG = BreakerConfig(failure_threshold=3, window=10.0, cool_down=5.0, probe_lease=2.0)
T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def redis_pair(settings: Settings) -> AsyncIterator[tuple[Redis, Redis]]:
    """Two clients, as two dispatcher processes would have."""
    first, second = make_redis(settings), make_redis(settings)
    yield first, second
    await first.aclose()
    await second.aclose()


@pytest.fixture
def prefix(settings: Settings) -> str:
    return f"{settings.topic_prefix}-br{secrets.token_hex(3)}"


def two_processes(
    redis_pair: tuple[Redis, Redis], prefix: str, clock: FakeClock, sync_interval: float = 1.0
) -> tuple[CircuitBreaker, CircuitBreaker]:
    """The breakers of two dispatcher processes, one Redis client each, one clock."""
    return (
        CircuitBreaker(redis_pair[0], prefix, CONFIG, clock=clock, sync_interval=sync_interval),
        CircuitBreaker(redis_pair[1], prefix, CONFIG, clock=clock, sync_interval=sync_interval),
    )


async def test_two_processes_see_one_breaker(redis_pair: tuple[Redis, Redis], prefix: str) -> None:
    clock = FakeClock()
    a, b = two_processes(redis_pair, prefix, clock)
    target = "dead.example:443"
    # Failures counted by both processes add up to one run.
    await a.record(target, ok=False)
    await b.record(target, ok=False)
    assert await b.allow(target)
    await a.record(target, ok=False)
    assert not await b.allow(target), "b must see the breaker a's failure opened"
    key = breaker_key(prefix, target)
    assert 0 < await redis_pair[0].pttl(key) <= CONFIG.ttl_ms

    clock.now += CONFIG.cool_down
    assert await b.allow(target), "after the cool-down one probe goes"
    assert not await a.allow(target), "only one probe at a time, across processes"
    await b.record(target, ok=True)
    assert await a.allow(target)
    assert a.state(target) is BreakerState.CLOSED
    assert await redis_pair[0].exists(key) == 0, "a closed breaker leaves no key behind"


async def test_exactly_one_probe_among_concurrent_callers(
    redis_pair: tuple[Redis, Redis], prefix: str
) -> None:
    clock = FakeClock()
    a, b = two_processes(redis_pair, prefix, clock)
    target = "flaky.example:8443"
    for _ in range(CONFIG.failure_threshold):
        await a.record(target, ok=False)
    clock.now += CONFIG.cool_down + 0.1
    answers = await asyncio.gather(*(x.allow(target) for _ in range(20) for x in (a, b)))
    assert answers.count(True) == 1


async def test_a_closed_view_is_trusted_for_sync_interval_only(
    redis_pair: tuple[Redis, Redis], prefix: str
) -> None:
    clock = FakeClock()
    a, b = two_processes(redis_pair, prefix, clock, sync_interval=1.0)
    target = "t.example:80"
    assert await b.allow(target)  # b learns "closed" from Redis
    for _ in range(CONFIG.failure_threshold):
        await a.record(target, ok=False)
    clock.now += 0.5
    assert await b.allow(target), "within sync_interval b answers from its own view"
    clock.now += 0.5
    assert not await b.allow(target), "after sync_interval b asks Redis again"


async def test_lua_script_matches_the_pure_machine(settings: Settings, prefix: str) -> None:
    """Random histories through both implementations, step by step, including the exact
    boundaries (cool_down, probe_lease, window) where >= and > differ."""
    redis = make_redis(settings)
    store = RedisBreakerStore(redis, prefix, CONFIG)
    steps = [0.0, 0.0, 0.3, 1.0, 2.0, 3.7, 5.0, 10.0, 10.001]
    rng = random.Random(5)
    try:
        for history in range(150):
            target = f"h{history}:1"
            snap, now = CLOSED, T0 + history * 1000
            for _ in range(25):
                now += rng.choice(steps)
                op = rng.choice(["allow", "allow", "ok", "fail", "fail", "fail"])
                if op == "allow":
                    expected = decide(snap, now, CONFIG)
                else:
                    expected = (True, observe(snap, op == "ok", now, CONFIG))
                got = await store.apply(op, target, now)  # type: ignore[arg-type]
                if op == "allow":
                    assert got == expected, (history, op, now - T0, snap)
                else:
                    assert got[1] == expected[1], (history, op, now - T0, snap)
                snap = expected[1]
    finally:
        await redis.delete(*[breaker_key(prefix, f"h{i}:1") for i in range(150)])
        await redis.aclose()


async def test_redis_down_falls_back_to_a_local_breaker_quickly(settings: Settings) -> None:
    # Nothing listens on this port: every Redis call fails at once (connection refused).
    dead = Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5, socket_timeout=0.5
    )
    clock = FakeClock()
    breaker = CircuitBreaker(dead, "p", CONFIG, clock=clock, redis_retry=5.0)
    target = "dead.example:443"
    started = time.monotonic()
    try:
        for _ in range(CONFIG.failure_threshold):
            assert await breaker.allow(target)
            await breaker.record(target, ok=False)
        assert not await breaker.allow(target), "the local breaker opened on its own"
        clock.now += CONFIG.cool_down
        assert await breaker.allow(target)
        assert not await breaker.allow(target)
        await breaker.record(target, ok=True)
        assert await breaker.allow(target)
    finally:
        await dead.aclose()
    # After the first failure Redis is not asked again for redis_retry seconds.
    assert time.monotonic() - started < 1.0


async def test_calls_failing_together_log_the_outage_once(settings: Settings) -> None:
    dead = Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5, socket_timeout=0.5
    )
    breaker = CircuitBreaker(dead, "p", CONFIG, clock=FakeClock(), redis_retry=5.0)
    try:
        with capture_logs() as logs:
            # Forty deliveries to forty targets ask at once, as after a stall of the
            # process: one outage, one line (a dispatcher logged forty in one go).
            allowed = await asyncio.gather(*(breaker.allow(f"t{n}:443") for n in range(40)))
    finally:
        await dead.aclose()
    assert all(allowed)
    outages = [e for e in logs if e["event"].startswith("breaker state is local")]
    assert len(outages) == 1, outages
    assert outages[0]["retry_in"] == 5.0


class CountingStore:
    """Wraps a store's scripts: how many transitions (``calls``) and how many at once at
    most, and how many batched reads (``reads``)."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        store = breaker._store
        assert store is not None
        self.calls = 0
        self.out = 0
        self.most = 0
        self.reads = 0
        script, read_script = store._script, store._read_script

        async def counted(*args: object, **kwargs: object) -> object:
            self.calls += 1
            self.out += 1
            self.most = max(self.most, self.out)
            try:
                return await script(*args, **kwargs)
            finally:
                self.out -= 1

        async def counted_read(*args: object, **kwargs: object) -> object:
            self.reads += 1
            return await read_script(*args, **kwargs)

        store._script = counted  # type: ignore[assignment]
        store._read_script = counted_read  # type: ignore[assignment]


def counted_pair(
    redis_pair: tuple[Redis, Redis], prefix: str
) -> tuple[FakeClock, CircuitBreaker, CircuitBreaker, CountingStore]:
    """Two processes' breakers on one clock, the second's script calls counted."""
    clock = FakeClock()
    a, b = two_processes(redis_pair, prefix, clock, sync_interval=1.0)
    return clock, a, b, CountingStore(b)


async def test_stale_closed_views_are_read_back_together(
    redis_pair: tuple[Redis, Redis], prefix: str
) -> None:
    # A thousand healthy targets each went stale once a second, and each cost a script
    # call of its own: round trips grew with the targets, not with the deliveries.
    clock, a, b, wire = counted_pair(redis_pair, prefix)
    targets = [f"t{n}.example:80" for n in range(200)]
    assert all(await asyncio.gather(*(b.allow(t) for t in targets)))
    assert (wire.calls, wire.reads) == (0, 1), "200 unseen targets: one read, no transition"

    for _ in range(CONFIG.failure_threshold):  # another process opens one of them
        await a.record(targets[7], ok=False)
    clock.now += 1.0  # every view of b's is stale
    answers = await asyncio.gather(*(b.allow(t) for t in targets))
    assert [n for n, allowed in enumerate(answers) if not allowed] == [7]
    assert b.state(targets[7]) is BreakerState.OPEN
    assert wire.reads == 2
    assert wire.calls == 1, "only the target that is not plainly closed takes its own call"

    # Successes on stale closed views reset nothing anywhere: no transition either.
    clock.now += 1.0
    await asyncio.gather(*(b.record(t, ok=True) for t in targets if t != targets[7]))
    assert (wire.calls, wire.reads) == (1, 3)


async def test_targets_with_a_failure_on_the_books_are_asked_in_the_batched_read(
    redis_pair: tuple[Redis, Redis], prefix: str
) -> None:
    # Slow targets: one hang leaves a failure until the next success. Every allow still
    # asks Redis (another process may open the breaker), but in batches, not one
    # transition per target per allow.
    _, a, b, wire = counted_pair(redis_pair, prefix)
    targets = [f"hang{n}.example:80" for n in range(50)]
    await asyncio.gather(*(b.record(t, ok=False) for t in targets))
    calls = wire.calls
    for _ in range(3):
        assert all(await asyncio.gather(*(b.allow(t) for t in targets)))
    assert wire.calls == calls, "no one-target transition for a closed breaker"
    assert wire.reads == 3
    # The guarantee stands: another process's opening is seen at the very next allow.
    for _ in range(CONFIG.failure_threshold):
        await a.record(targets[0], ok=False)
    assert not await b.allow(targets[0])
    assert await b.allow(targets[1])


async def test_every_caller_sharing_a_batched_read_takes_its_answer(
    redis_pair: tuple[Redis, Redis], prefix: str
) -> None:
    # Slow targets have several requests asking about one target at once. The first
    # caller back from the batch remembered its answer, and every other one took that
    # for a newer transition and made a one-target call of its own.
    clock, a, b, wire = counted_pair(redis_pair, prefix)
    targets = [f"busy{n}.example:80" for n in range(20)]
    await b.record(targets[0], ok=False)  # one with a failure on the books
    calls = wire.calls
    clock.now += 1.0
    asks = [b.allow(t) for t in targets for _ in range(4)]
    assert all(await asyncio.gather(*asks))
    assert wire.calls == calls, "no one-target transition for a closed breaker"
    assert wire.reads == 1
    # Another process's opening is still seen by the next allow after the view is stale.
    for _ in range(CONFIG.failure_threshold):
        await a.record(targets[3], ok=False)
    clock.now += 1.0
    answers = await asyncio.gather(*(b.allow(targets[3]) for _ in range(4)))
    assert not any(answers)


async def test_a_batched_read_never_overwrites_a_newer_transition(
    redis_pair: tuple[Redis, Redis], prefix: str
) -> None:
    # A batch reads "closed", and this process opens the breaker before it is back.
    target, clock = "t.example:80", FakeClock()
    b = CircuitBreaker(redis_pair[1], prefix, CONFIG, clock=clock)
    assert await b.allow(target)
    clock.now += 1.0  # b's view is stale
    assert b._store is not None
    read, was_read, release = b._store._read_script, asyncio.Event(), asyncio.Event()

    async def read_then_wait(*args: object, **kwargs: object) -> object:
        rows = await read(*args, **kwargs)  # type: ignore[arg-type]
        was_read.set()  # "closed", as Redis still says
        await release.wait()
        return rows

    b._store._read_script = read_then_wait  # type: ignore[assignment]
    asking = asyncio.create_task(b.allow(target))
    await was_read.wait()
    for _ in range(CONFIG.failure_threshold):  # meanwhile this process opens it
        await b.record(target, ok=False)
    assert b.state(target) is BreakerState.OPEN
    release.set()
    assert not await asking, "the read was older than the breaker opening"
    assert b.state(target) is BreakerState.OPEN


async def test_a_failed_batched_read_falls_back_to_one_call_per_target(
    redis_pair: tuple[Redis, Redis], prefix: str
) -> None:
    async def broken(*args: object, **kwargs: object) -> object:
        raise ValueError("not what the script returns")

    b = CircuitBreaker(redis_pair[1], prefix, CONFIG, clock=FakeClock())
    wire = CountingStore(b)
    assert b._store is not None
    b._store._read_script = broken  # type: ignore[assignment]
    with capture_logs() as logs:
        assert all(await asyncio.gather(*(b.allow(f"u{n}:80") for n in range(3))))
    assert wire.calls == 3
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["breaker states not read"]


async def test_a_burst_of_timeouts_costs_a_couple_of_round_trips_not_one_each(
    redis_pair: tuple[Redis, Redis], prefix: str
) -> None:
    clock = FakeClock()
    a = CircuitBreaker(redis_pair[0], prefix, CONFIG, clock=clock)
    wire = CountingStore(a)
    target = "black.hole:443"
    # 64 requests time out at once: their failures go in at most two script calls.
    await asyncio.gather(*(a.record(target, ok=False) for _ in range(64)))
    assert wire.calls <= 2
    assert wire.most == 1
    assert a.state(target) is BreakerState.OPEN
    raw = await redis_pair[0].hget(breaker_key(prefix, target), "failures")
    assert raw is not None
    assert int(raw) >= CONFIG.failure_threshold

    # 64 callers asking at once share one lookup; once the cool-down is over exactly one
    # of them is the probe.
    clock.now += CONFIG.cool_down + 0.1
    before = wire.calls
    answers = await asyncio.gather(*(a.allow(target) for _ in range(64)))
    assert answers.count(True) == 1
    assert wire.calls - before == 1
    assert wire.most == 1


async def test_a_success_then_failures_in_one_batch_matches_the_machine(
    redis_pair: tuple[Redis, Redis], prefix: str
) -> None:
    clock = FakeClock()
    a = CircuitBreaker(redis_pair[0], prefix, CONFIG, clock=clock)
    target = "mixed.example:443"
    store = RedisBreakerStore(redis_pair[1], prefix, CONFIG)
    _, snap = await store.record(target, T0, reset=False, failures=2)
    assert snap.failures == 2
    assert snap.state is BreakerState.CLOSED
    _, snap = await store.record(target, T0, reset=True, failures=1)
    expected = observe(
        observe(observe(observe(CLOSED, False, T0, CONFIG), False, T0, CONFIG), True, T0, CONFIG),
        False,
        T0,
        CONFIG,
    )
    assert snap == expected
    assert await a.allow(target)
