"""LoopStalls: which part of an attempt's time the process itself was not running."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.dispatcher.stalls import LoopStalls, ZombieFence


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def ticking(clock: Clock, stalls: LoopStalls, until: float, step: float = 0.1) -> None:
    while clock.t < until:
        clock.t = round(clock.t + step, 6)
        stalls.ticked()


def test_a_loop_that_keeps_ticking_never_stalls() -> None:
    clock = Clock()
    stalls = LoopStalls(clock=clock)
    ticking(clock, stalls, 120)
    assert stalls.stalled_within(100, 120) == 0


def test_a_pause_is_measured_where_it_overlaps_the_attempt() -> None:
    clock = Clock()
    stalls = LoopStalls(clock=clock)
    ticking(clock, stalls, 105)
    clock.t = 135.0  # SIGSTOP for 30 s
    stalls.ticked()
    ticking(clock, stalls, 140)
    assert stalls.stalled_within(103, 140) == pytest.approx(30)
    assert stalls.stalled_within(120, 125) == pytest.approx(5)
    assert stalls.stalled_within(136, 140) == 0
    assert stalls.stalled_within(90, 104) == 0


def test_a_stall_not_yet_ticked_counts() -> None:
    """After SIGCONT a request's timeout can run before the ticking task does."""
    clock = Clock()
    stalls = LoopStalls(clock=clock)
    ticking(clock, stalls, 102)
    clock.t = 132.0
    assert stalls.stalled_within(101, 132) == pytest.approx(30)


def test_short_gaps_are_not_stalls() -> None:
    clock = Clock()
    stalls = LoopStalls(clock=clock)
    ticking(clock, stalls, 110, step=0.9)
    assert stalls.stalled_within(100, 110) == 0


async def test_the_ticking_task_sees_a_blocked_loop() -> None:
    stalls = LoopStalls(tick=0.01, threshold=0.2)
    task = asyncio.create_task(stalls.run())
    await asyncio.sleep(0.05)
    start = stalls.now()
    time.sleep(0.5)  # the loop is blocked, as if the process were stopped
    await asyncio.sleep(0.05)
    task.cancel()
    assert stalls.stalled_within(start, stalls.now()) >= 0.4


def test_the_fence_holds_after_a_stall_past_the_session_timeout_until_reassigned() -> None:
    clock = Clock()
    stalls = LoopStalls(clock=clock)
    fence = ZombieFence(stalls, session_timeout=10, hold=30)
    ticking(clock, stalls, 105)
    assert not fence.fenced()
    clock.t = 120.0  # stopped 15 s: the group has moved on
    assert fence.fenced()  # even before the ticking task has seen the stall
    stalls.ticked()
    ticking(clock, stalls, 122)
    assert fence.fenced()
    fence.renewed()  # partitions assigned again
    assert not fence.fenced()


def test_the_fence_ignores_short_stalls_and_lifts_without_a_rebalance() -> None:
    clock = Clock()
    stalls = LoopStalls(clock=clock)
    fence = ZombieFence(stalls, session_timeout=10, hold=30)
    clock.t = 105.0  # 5 s: still a member
    stalls.ticked()
    assert not fence.fenced()
    clock.t = 120.0  # 15 s
    stalls.ticked()
    assert fence.fenced()
    ticking(clock, stalls, 151)  # no rebalance came: it was not evicted after all
    assert not fence.fenced()
