"""StartRates: no more than `rate` starts in any one-second window; far starts refused."""

from __future__ import annotations

import uuid

from services.dispatcher.rates import HORIZON, MAX_WAITING, StartRates


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def starts_in_windows_ok(starts: list[float], rate: int) -> bool:
    return all(sum(1 for s in starts if t <= s < t + 1.0) <= rate for t in starts)


def test_the_burst_is_the_rate_then_one_window_at_a_time() -> None:
    clock = Clock()
    rates = StartRates(clock)
    key = uuid.uuid4()
    waits = [rates.reserve(key, 5) for _ in range(50)]
    assert all(w is not None for w in waits)
    starts = [clock.now + w for w in waits if w is not None]
    assert starts[:5] == [clock.now] * 5  # the burst
    assert starts[-1] - starts[0] >= 9.0  # 50 at 5/s: the last starts 9 s later
    assert starts_in_windows_ok(starts, 5)
    assert starts == sorted(starts)


def test_subscriptions_are_limited_apart() -> None:
    rates = StartRates(Clock())
    a, b = uuid.uuid4(), uuid.uuid4()
    for _ in range(5):
        assert rates.reserve(a, 5) == 0
    assert rates.reserve(b, 5) == 0  # a's limit says nothing about b
    assert rates.reserve(a, 5) == 1.0


def test_time_passing_frees_the_window() -> None:
    clock = Clock()
    rates = StartRates(clock)
    key = uuid.uuid4()
    for _ in range(3):
        rates.reserve(key, 3)
    clock.now += 1.0
    assert rates.reserve(key, 3) == 0
    clock.now += 5.0
    rates.forget_idle()
    assert len(rates) == 0


def test_starts_beyond_the_horizon_are_refused_and_reserve_nothing() -> None:
    clock = Clock()
    rates = StartRates(clock)
    key = uuid.uuid4()
    waits = [rates.reserve(key, 1) for _ in range(int(HORIZON) + 3)]
    assert waits[: int(HORIZON) + 1] == [float(n) for n in range(int(HORIZON) + 1)]
    assert waits[-1] is None
    assert rates.reserve(key, 1) is None  # still refused: nothing was reserved
    fast = uuid.uuid4()
    taken = [rates.reserve(fast, 1000) for _ in range(MAX_WAITING * 2)]
    held = [w for w in taken if w is not None]
    assert max(held) <= MAX_WAITING / 1000
    assert len(held) <= 1000 + MAX_WAITING
