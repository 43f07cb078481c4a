"""The bench's bare-client floor (``bench.client_floor``) runs in a child process against
a real farm on loopback, and measures a client that reuses its connections: against
instant targets every request after the warm-up rides the warm-up's connection, for the
dispatcher's client and for aiohttp's alike."""

from __future__ import annotations

import pytest

from bench import client_floor, targets


@pytest.mark.parametrize("client", client_floor.CLIENTS)
def test_the_floor_reuses_one_connection_per_instant_target(
    monkeypatch: pytest.MonkeyPatch, client: str
) -> None:
    monkeypatch.setenv("BENCH_CLIENT_FLOOR_N", "3000")
    result = client_floor.in_child(client, "instant")
    assert (result["client"], result["shape"]) == (client, "instant")
    assert result["connections"] == client_floor.TARGETS
    assert result["cpu_us"] > 0
    assert result["rate"] > 0
    slow = {**result, "cpu_us": 2 * result["cpu_us"]}
    rows = targets.floor_rows(
        {(c, s): result if s != "slow" else slow for c in client_floor.CLIENTS
         for s in client_floor.SHAPES}
    )  # fmt: skip
    assert [r["value"] for r in rows if r["unit"] == "%"] == [50.0, 50.0]
    wide = [r for r in rows if r["metric"].endswith(f"{client_floor.SLOW_OPEN:,} open")]
    assert len(wide) == 2
    assert all("+0 µs per request" in r["note"] for r in wide)
