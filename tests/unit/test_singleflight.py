"""SingleFlight: one run per key at a time, shared by every caller."""

from __future__ import annotations

import asyncio

import pytest

from shared.singleflight import SingleFlight


async def test_concurrent_callers_share_one_run() -> None:
    runs = 0

    async def work() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.01)
        return runs

    flight: SingleFlight[str, int] = SingleFlight()
    assert await asyncio.gather(*(flight.run("k", work) for _ in range(50))) == [1] * 50
    assert await flight.run("k", work) == 2  # finished runs are not remembered
    assert "k" not in flight


async def test_a_cancelled_caller_does_not_cancel_the_run_for_the_others() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    started = asyncio.Event()

    async def work() -> str:
        started.set()
        await asyncio.sleep(0.05)
        return "done"

    first = asyncio.create_task(flight.run("k", work))
    await started.wait()
    second = asyncio.create_task(flight.run("k", work))
    first.cancel()
    assert await second == "done"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_an_error_reaches_every_caller() -> None:
    flight: SingleFlight[str, None] = SingleFlight()

    async def work() -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("database down")

    results = await asyncio.gather(
        *(flight.run("k", work) for _ in range(3)), return_exceptions=True
    )
    assert [type(r) for r in results] == [RuntimeError] * 3
