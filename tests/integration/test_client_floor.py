"""The bench's bare-client floor (``bench.client_floor``) runs in a child process against
a real farm on loopback, and measures a client that reuses its connections: against
instant targets every request after the warm-up rides the warm-up's connection."""

from __future__ import annotations

import pytest

from bench import client_floor, targets


def test_the_floor_reuses_one_connection_per_instant_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BENCH_CLIENT_FLOOR_N", "3000")
    result = client_floor.in_child("instant")
    assert result["shape"] == "instant"
    assert result["connections"] == client_floor.TARGETS
    assert result["cpu_us"] > 0
    assert result["rate"] > 0
    rows = targets.floor_rows(
        {"instant": result, "slow": {**result, "cpu_us": 2 * result["cpu_us"]}}
    )
    assert rows[-1]["value"] == 50.0
