"""The circuit breaker's state machine (shared/breaker.py), pure, with an injected clock."""

from __future__ import annotations

import pytest

from shared.breaker import (
    CLOSED,
    BreakerConfig,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    breaker_key,
    decide,
    observe,
    target_of,
)

CONFIG = BreakerConfig(failure_threshold=3, window=10.0, cool_down=5.0, probe_lease=2.0)
T0 = 1_700_000_000.0


def fail_n(snap: BreakerSnapshot, times: list[float]) -> BreakerSnapshot:
    for t in times:
        snap = observe(snap, False, t, CONFIG)
    return snap


def test_closed_lets_everything_through_and_counts_failures() -> None:
    assert decide(CLOSED, T0, CONFIG) == (True, CLOSED)
    snap = fail_n(CLOSED, [T0, T0 + 1])
    assert snap == BreakerSnapshot(BreakerState.CLOSED, failures=2, since=T0)
    assert decide(snap, T0 + 2, CONFIG)[0] is True


def test_threshold_failures_within_the_window_open_it() -> None:
    snap = fail_n(CLOSED, [T0, T0 + 1, T0 + 9.5])
    assert snap.state is BreakerState.OPEN
    assert snap.opened_at == T0 + 9.5


def test_failures_spread_wider_than_the_window_start_a_new_run() -> None:
    snap = fail_n(CLOSED, [T0, T0 + 1, T0 + 10.5])
    assert snap == BreakerSnapshot(BreakerState.CLOSED, failures=1, since=T0 + 10.5)


def test_a_success_resets_the_run() -> None:
    snap = fail_n(CLOSED, [T0, T0 + 1])
    snap = observe(snap, True, T0 + 2, CONFIG)
    assert snap == CLOSED
    assert fail_n(snap, [T0 + 3, T0 + 4]).state is BreakerState.CLOSED


def test_open_refuses_until_the_cool_down_ends_then_lets_one_probe() -> None:
    snap = fail_n(CLOSED, [T0, T0, T0])
    assert decide(snap, T0 + 4.999, CONFIG) == (False, snap)
    allowed, probing = decide(snap, T0 + 5, CONFIG)
    assert allowed is True
    assert probing.state is BreakerState.HALF_OPEN
    assert probing.probe_at == T0 + 5
    # One probe at a time: the others wait for its answer (or its lease to run out).
    assert decide(probing, T0 + 5.1, CONFIG) == (False, probing)
    assert decide(probing, T0 + 6.9, CONFIG)[0] is False


def test_a_lost_probe_frees_the_slot_after_its_lease() -> None:
    _, probing = decide(fail_n(CLOSED, [T0] * 3), T0 + 5, CONFIG)
    allowed, again = decide(probing, T0 + 7, CONFIG)
    assert allowed is True
    assert again.state is BreakerState.HALF_OPEN
    assert again.probe_at == T0 + 7


def test_probe_success_closes_and_probe_failure_reopens() -> None:
    _, probing = decide(fail_n(CLOSED, [T0] * 3), T0 + 5, CONFIG)
    assert observe(probing, True, T0 + 5.5, CONFIG) == CLOSED
    reopened = observe(probing, False, T0 + 5.5, CONFIG)
    assert reopened.state is BreakerState.OPEN
    assert reopened.opened_at == T0 + 5.5
    assert decide(reopened, T0 + 10.4, CONFIG)[0] is False
    assert decide(reopened, T0 + 10.5, CONFIG)[0] is True


def test_late_results_while_open() -> None:
    opened = fail_n(CLOSED, [T0] * 3)
    # A failure of a request sent before it opened does not extend the cool-down...
    assert observe(opened, False, T0 + 4, CONFIG) == opened
    # ...and a success proves the target alive.
    assert observe(opened, True, T0 + 4, CONFIG) == CLOSED


def test_config_is_checked_and_ttl_outlives_every_state() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        BreakerConfig(failure_threshold=0)
    with pytest.raises(ValueError, match="positive"):
        BreakerConfig(cool_down=0)
    assert CONFIG.ttl_ms == 20_000
    assert BreakerConfig().ttl_ms / 1000 > BreakerConfig().cool_down + BreakerConfig().probe_lease


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("https://Hooks.Example.com/a?b=1", "hooks.example.com:443"),
        ("http://example.com/", "example.com:80"),
        ("http://127.0.0.1:8080/x", "127.0.0.1:8080"),
        ("https://[::1]:9443/hook", "[::1]:9443"),
        ("https://user:pw@example.com:8443/", "example.com:8443"),
    ],
)
def test_target_is_host_and_port(url: str, target: str) -> None:
    assert target_of(url) == target


def test_key_layout() -> None:
    assert breaker_key("hookstream", "a.example:443") == "hookstream:breaker:a.example:443"


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


async def test_local_breaker_runs_the_same_machine() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(None, "p", CONFIG, clock=clock)
    dead, alive = "dead.example:443", "alive.example:443"
    for _ in range(3):
        assert await breaker.allow(dead)
        await breaker.record(dead, ok=False)
    assert breaker.state(dead) is BreakerState.OPEN
    assert not await breaker.allow(dead)
    # One dead target does not affect another.
    assert await breaker.allow(alive)
    await breaker.record(alive, ok=True)
    clock.now += 5
    assert await breaker.allow(dead)  # the probe
    assert not await breaker.allow(dead)
    await breaker.record(dead, ok=True)
    assert breaker.state(dead) is BreakerState.CLOSED
    assert await breaker.allow(dead)


async def test_local_view_is_bounded() -> None:
    breaker = CircuitBreaker(None, "p", CONFIG, clock=FakeClock(), max_targets=2)
    for name in ("a:1", "b:1", "c:1"):
        for _ in range(3):
            await breaker.record(name, ok=False)
    # The least recently used target was forgotten (reads as closed); the others are open.
    assert [breaker.state(n) for n in ("a:1", "b:1", "c:1")] == [
        BreakerState.CLOSED,
        BreakerState.OPEN,
        BreakerState.OPEN,
    ]
