"""Garbage-collection pauses are timed and a long one is logged (issue 19): a latency
tail with no other cause in the process can then be matched to a collection.

The slow-collection case runs in a child interpreter (logging is process-wide; see
test_logging); it builds a heap large enough that a full collection takes longer than
the threshold it sets to 1 ms."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from shared import gcpauses
from tests.unit.test_logging import json_lines


def _count(generation: int) -> float:
    value = REGISTRY.get_sample_value(
        "hookstream_gc_pause_seconds_count", {"generation": str(generation)}
    )
    return value or 0.0


@pytest.fixture
def watching() -> Iterator[None]:
    """The timer for this test only: left in place, it would log pytest's own slow
    collections for the rest of the session."""
    gcpauses.watch()
    yield
    timer = gcpauses._installed
    assert timer is not None
    gcpauses._installed = None
    gc.callbacks.remove(timer)


@pytest.mark.usefixtures("watching")
def test_every_collection_is_timed_by_generation() -> None:
    gcpauses.watch()  # idempotent: one timer, one observation per collection
    # No automatic collection in between: the session's allocations may be one short of
    # pytest's young threshold.
    enabled = gc.isenabled()
    gc.disable()
    try:
        before = [_count(g) for g in range(3)]
        gc.collect(0)
        gc.collect(2)
        after = [_count(g) for g in range(3)]
    finally:
        if enabled:
            gc.enable()
    assert after[0] - before[0] == 1
    assert after[1] - before[1] == 0
    assert after[2] - before[2] == 1


def test_a_slow_collection_is_logged_with_its_generation_and_cpu_time() -> None:
    lines = json_lines(
        """
        import gc
        from shared import gcpauses
        gcpauses.SLOW = 0.001
        gcpauses.watch()
        heap = [[i] for i in range(2_000_000)]
        gc.collect(2)
        """
    )
    slow = [line for line in lines if line["event"] == "slow garbage collection"]
    assert slow, lines
    last = slow[-1]
    assert last["generation"] == 2
    assert last["logger"] == "gc"
    assert last["took_ms"] > 1
    assert 0 < last["cpu_ms"] <= last["took_ms"] + 1
