"""The dispatcher's memo in front of the circuit breaker: fewer lookups, same decisions."""

from __future__ import annotations

import asyncio

from services.dispatcher.breaker_gate import BreakerGate
from shared.breaker import CLOSED, BreakerConfig, BreakerSnapshot, BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingBreaker(CircuitBreaker):
    def __init__(self, clock: Clock, threshold: int = 2) -> None:
        super().__init__(None, "t", BreakerConfig(failure_threshold=threshold), clock=clock)
        self.asked = 0
        self.told: list[bool] = []  # every outcome told
        self.calls = 0  # the calls that told them (a round trip each)

    async def allow(self, target: str) -> bool:
        self.asked += 1
        return await super().allow(target)

    async def record(self, target: str, ok: bool, *, failures: int = 1) -> None:
        self.calls += 1
        self.told.extend([ok] if ok else [ok] * failures)
        await super().record(target, ok, failures=failures)


async def test_a_closed_target_is_asked_about_once_per_fresh_period() -> None:
    clock = Clock()
    breaker = CountingBreaker(clock)
    gate = BreakerGate(breaker, fresh=0.1, clock=clock)
    for _ in range(100):
        assert await gate.allow("a:80")
        await gate.record("a:80", ok=True)
    assert breaker.asked == 1
    assert breaker.told == []
    clock.now += 0.2
    assert await gate.allow("a:80")
    assert breaker.asked == 2


async def test_a_run_of_failures_reaches_the_breaker_and_an_open_one_is_seen_at_once() -> None:
    clock = Clock()
    breaker = CountingBreaker(clock)
    gate = BreakerGate(breaker, fresh=0.1, clock=clock)
    assert await gate.allow("b:80")
    await gate.record("b:80", ok=False)
    await gate.record("b:80", ok=False)
    assert breaker.told == [False, False]
    assert breaker.calls == 1  # the held first failure went with the second
    assert breaker.state("b:80") is BreakerState.OPEN
    assert not await gate.allow("b:80")  # no stale "closed" memo survives a failure


async def test_a_lone_failure_is_held_and_a_success_forgives_it() -> None:
    """A slow target's hang among successes (1 % of requests): nothing reaches the
    breaker, and it stays closed."""
    clock = Clock()
    breaker = CountingBreaker(clock)  # opens after 2 failures in a row
    gate = BreakerGate(breaker, fresh=0.1, clock=clock)
    for _ in range(5):
        assert await gate.allow("h:80")
        await gate.record("h:80", ok=False)
        assert gate.allows_now("h:80")  # nothing told: the memo stands
        assert not gate.quiet("h:80", ok=True)  # the next success must forgive it
        for _ in range(7):
            await gate.record("h:80", ok=True)
    assert breaker.told == []
    assert breaker.state("h:80") is BreakerState.CLOSED


async def test_the_first_success_after_a_told_failure_always_reaches_the_breaker() -> None:
    """A flaky target (two requests in nine fail, in a row) under load: the memo is re-made
    by the next lookup right after the failures; were the successes in between kept from
    the breaker, it would see only failures, in a row, and open on a live target."""
    clock = Clock()
    breaker = CountingBreaker(clock, threshold=3)
    gate = BreakerGate(breaker, fresh=0.1, clock=clock)
    for _ in range(5):
        assert await gate.allow("c:80")
        await gate.record("c:80", ok=False)
        await gate.record("c:80", ok=False)
        assert await gate.allow("c:80")  # another request: memo fresh again
        for _ in range(7):
            await gate.record("c:80", ok=True)
    assert breaker.state("c:80") is BreakerState.CLOSED
    # One success reported per run of failures, not all 35.
    assert breaker.told == [False, False, True] * 5


async def test_a_failure_is_told_at_once_unless_the_breaker_is_plainly_closed() -> None:
    """Another process's failures on the books (or an open breaker, whose probe this may
    be): a failure here must reach the breaker now, not wait for a second one."""
    clock = Clock()
    breaker = CountingBreaker(clock, threshold=3)
    gate = BreakerGate(breaker, fresh=0.1, clock=clock)
    breaker._remember("p:80", BreakerSnapshot(failures=1, since=clock.now), clock.now)
    await gate.record("p:80", ok=False)
    assert breaker.told == [False]
    assert breaker.state("p:80") is BreakerState.CLOSED
    await gate.record("p:80", ok=False)
    assert breaker.state("p:80") is BreakerState.OPEN


async def test_a_success_while_a_failure_is_still_being_reported_reaches_the_breaker() -> None:
    """The breaker's own view shows failures only once their round trip returns; the
    gate must not wait for that before letting the next success through."""
    clock = Clock()
    breaker = CountingBreaker(clock)
    gate = BreakerGate(breaker, fresh=0.1, clock=clock)
    reported = asyncio.Event()
    original = breaker.record

    async def slow_failure(target: str, ok: bool, *, failures: int = 1) -> None:
        if not ok:
            breaker.told.extend([ok] * failures)
            await reported.wait()  # the round trip is still out
            await CircuitBreaker.record(breaker, target, ok, failures=failures)
        else:
            await original(target, ok)

    breaker.record = slow_failure  # type: ignore[method-assign]
    assert await gate.allow("d:80")
    await gate.record("d:80", ok=False)  # held
    failing = asyncio.create_task(gate.record("d:80", ok=False))
    await asyncio.sleep(0)
    assert await gate.allow("d:80")  # another request re-makes the memo meanwhile
    await gate.record("d:80", ok=True)
    reported.set()
    await failing
    assert breaker.told == [False, False, True]


async def test_the_hot_path_checks_answer_as_allow_and_record_would() -> None:
    """``allows_now`` and ``quiet`` skip the coroutines only where ``allow`` and ``record``
    would not have asked or told the breaker anything."""
    clock = Clock()
    breaker = CountingBreaker(clock, threshold=3)
    gate = BreakerGate(breaker, fresh=0.1, clock=clock)
    assert not gate.allows_now("e:80")  # never seen: ask
    assert await gate.allow("e:80")
    assert gate.allows_now("e:80")
    assert gate.quiet("e:80", ok=True)
    assert not gate.quiet("e:80", ok=False)  # a failure is always told
    # A slow target's next request: the memo went stale, the breaker's view is not (Redis
    # said "closed" a moment ago; its batched read remembers so).
    clock.now += 0.5
    breaker._remember("e:80", CLOSED, clock.now - 0.2)
    assert gate.quiet("e:80", ok=True)
    assert gate.allows_now("e:80")
    assert breaker.asked == 1
    assert breaker.told == []
    clock.now += 0.05
    assert gate.allows_now("e:80")  # the memo was renewed
    # A lone failure is held: nothing told, the memo stands, and the next success is
    # not quiet (it forgives the failure, telling nothing either).
    await gate.record("e:80", ok=False)
    assert gate.allows_now("e:80")
    assert not gate.quiet("e:80", ok=True)
    await gate.record("e:80", ok=True)
    assert gate.quiet("e:80", ok=True)
    assert breaker.told == []
    # After a run of failures neither check passes until the breaker has seen a success.
    await gate.record("e:80", ok=False)
    await gate.record("e:80", ok=False)
    assert not gate.allows_now("e:80")
    assert await gate.allow("e:80")
    assert not gate.quiet("e:80", ok=True)
    await gate.record("e:80", ok=True)
    assert breaker.told == [False, False, True]
    # The breaker's view goes stale after its sync interval: ask again.
    clock.now += 5
    assert not gate.allows_now("e:80")
    assert not gate.quiet("e:80", ok=True)


def test_a_success_asks_whether_the_view_was_fresh_when_its_request_began() -> None:
    """A slow target's view may go stale while its request is out: the success still tells
    the breaker nothing if the view was plainly closed when the request began, at most one
    more sync interval (1 s here) back."""
    clock = Clock()
    breaker = CountingBreaker(clock)
    gate = BreakerGate(breaker, fresh=0.1, clock=clock)
    breaker._remember("s:80", CLOSED, clock.now - 1.2)  # went stale 0.2 s ago
    assert not gate.quiet("s:80", ok=True)
    assert not gate.quiet("s:80", ok=True, took=0.1)  # began after the view went stale
    assert gate.quiet("s:80", ok=True, took=0.5)  # began while it was fresh
    assert not gate.quiet("s:80", ok=False, took=0.5)  # a failure is always told
    breaker._remember("s:80", CLOSED, clock.now - 2.5)
    assert not gate.quiet("s:80", ok=True, took=5.0)  # the slack is one interval at most
    # A view with failures on the books is never "plainly closed", however fresh.
    breaker._remember("s:80", BreakerSnapshot(failures=1, since=clock.now), clock.now)
    assert not gate.quiet("s:80", ok=True, took=0.5)


def test_the_breaker_keeps_one_object_for_plainly_closed() -> None:
    """The hot path compares identity: an equal snapshot read back from Redis is kept as
    the ``CLOSED`` object itself."""
    clock = Clock()
    breaker = CountingBreaker(clock)
    breaker._remember("c:80", BreakerSnapshot(), clock.now)
    assert breaker.closed_lately("c:80")
    assert breaker._known["c:80"].snapshot is CLOSED
