"""Young collections paced by the requests in flight and the jobs in progress
(services.dispatcher.gcpace)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from services.dispatcher import gcpace
from services.dispatcher.limits import TargetLimits


@pytest.fixture
def thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(*gcpace.thresholds(0, 100))  # as tune_gc leaves them
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def test_few_requests_open_keep_the_base_threshold() -> None:
    assert gcpace.thresholds(0, 100) == (gcpace.BASE, gcpace.GEN1_EVERY // gcpace.BASE, 100)
    assert gcpace.thresholds(-3, 100)[0] == gcpace.BASE  # never below the base


def test_the_young_threshold_grows_with_open_requests_up_to_its_ceiling() -> None:
    young, _, full = gcpace.thresholds(2_500, 100)
    assert young == min(gcpace.BASE + 2_500 * gcpace.PER_OPEN, gcpace.CEILING) > gcpace.BASE
    assert full == 100
    assert gcpace.thresholds(1_000_000, 100)[0] == gcpace.CEILING


def test_jobs_waiting_for_a_slot_raise_the_threshold_too() -> None:
    # A backlog against instant targets: few requests open, thousands of jobs waiting.
    young = gcpace.thresholds(150, 100, jobs=3_000)[0]
    assert young == gcpace.BASE + 3_000 * gcpace.PER_JOB > gcpace.thresholds(150, 100)[0]
    # Whichever keeps more alive: the open requests are among the jobs.
    assert gcpace.thresholds(2_000, 100, jobs=2_500)[0] == gcpace.BASE + 2_000 * gcpace.PER_OPEN
    assert gcpace.thresholds(0, 100, jobs=17_000)[0] == gcpace.CEILING
    assert gcpace.thresholds(0, 100, jobs=10)[0] == gcpace.BASE + 10 * gcpace.PER_JOB


def test_a_gen1_collection_still_comes_every_million_allocations_or_so() -> None:
    for in_flight, jobs in ((0, 0), (500, 0), (2_500, 0), (10_000, 0), (100, 4_000)):
        young, gen1, _ = gcpace.thresholds(in_flight, 100, jobs)
        assert gcpace.GEN1_EVERY * 0.8 <= young * gen1 <= gcpace.GEN1_EVERY


@pytest.mark.usefixtures("thresholds")
def test_pace_sets_the_thresholds_only_when_they_moved_past_the_hysteresis() -> None:
    assert gcpace.pace(10) == gc.get_threshold() == (gcpace.BASE, 20, 100)  # +4,000: noise
    wanted = gcpace.thresholds(3_000, 100)
    assert gcpace.pace(3_000) == gc.get_threshold() == wanted
    assert gcpace.pace(0) == gc.get_threshold() == (gcpace.BASE, 20, 100)  # and back


@pytest.mark.usefixtures("thresholds")
async def test_the_in_flight_bound_tick_paces_the_collector() -> None:
    limits = TargetLimits(total=5_000, per_target=5_000)
    for _ in range(3_000):
        assert await limits.acquire("t")
    told: asyncio.Queue[int] = asyncio.Queue()

    def on_tick(in_flight: int) -> None:
        told.put_nowait(in_flight)
        gcpace.pace(in_flight)

    ticking = asyncio.create_task(limits.run(on_tick=on_tick))
    try:
        assert await asyncio.wait_for(told.get(), 5) == 3_000
    finally:
        ticking.cancel()
    assert gc.get_threshold()[0] == gcpace.thresholds(3_000, 100)[0] > gcpace.BASE
