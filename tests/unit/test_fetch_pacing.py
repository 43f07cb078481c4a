"""FetchPacing's rule (shared/kafka.py) without a broker: when it calls a flow busy, and
that it never touches a consumer it cannot pace."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from shared.kafka import BUSY_RECORDS_PER_S, FetchPacing, busy


def test_busy_is_a_rate_above_the_threshold() -> None:
    assert busy(int(BUSY_RECORDS_PER_S), 1.0) is False  # exactly the threshold
    assert busy(int(BUSY_RECORDS_PER_S * 0.2) + 1, 0.2) is True
    assert busy(0, 0.1) is False
    assert busy(10, 0.0) is False


def _consumer() -> Any:
    return SimpleNamespace(_fetcher=SimpleNamespace(_fetch_min_bytes=1, _fetch_max_wait_ms=100))


def _advance(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    now = time.monotonic() + seconds
    monkeypatch.setattr(time, "monotonic", lambda: now)


def test_decides_once_per_window_and_switches_back(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = _consumer()
    pacing = FetchPacing(consumer, 2)
    pacing.fetched(10_000)  # within the first window: no decision yet
    assert consumer._fetcher._fetch_min_bytes == 1
    _advance(monkeypatch, 0.2)
    pacing.fetched(0)
    assert pacing.busy
    assert consumer._fetcher._fetch_max_wait_ms == 2
    _advance(monkeypatch, 0.4)
    pacing.fetched(3)
    assert not pacing.busy
    assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (1, 100)


def test_zero_wait_never_touches_the_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = _consumer()
    pacing = FetchPacing(consumer, 0)
    _advance(monkeypatch, 1.0)
    pacing.fetched(1_000_000)
    assert pacing.off
    assert not pacing.busy
    assert consumer._fetcher._fetch_min_bytes == 1


def test_a_consumer_without_the_settings_turns_pacing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    pacing = FetchPacing(SimpleNamespace(), 1)
    _advance(monkeypatch, 1.0)
    pacing.fetched(1_000_000)
    assert pacing.off
    assert not pacing.busy
