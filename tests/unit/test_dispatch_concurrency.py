"""Per-target and global bounds, and the group-commit writer (no I/O)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from services.dispatcher.batching import GroupCommit, is_refused_row
from services.dispatcher.limits import (
    FLOOR,
    LAG_CEILING,
    LAG_HIGH,
    LAG_LOW,
    START,
    LoopLimit,
    TargetLimits,
)


async def test_per_target_bound_holds_and_a_saturated_target_does_not_starve_others() -> None:
    limits = TargetLimits(total=4, per_target=2)
    active: dict[str, int] = {"slow": 0, "fast": 0}
    peak: dict[str, int] = {"slow": 0, "fast": 0}
    slow_release = asyncio.Event()
    fast_done = 0

    async def call(target: str) -> None:
        nonlocal fast_done
        await limits.acquire(target)
        try:
            active[target] += 1
            peak[target] = max(peak[target], active[target])
            if target == "slow":
                await slow_release.wait()
            else:
                await asyncio.sleep(0)
                fast_done += 1
        finally:
            active[target] -= 1
            limits.release(target)

    slow = [asyncio.create_task(call("slow")) for _ in range(10)]
    fast = [asyncio.create_task(call("fast")) for _ in range(10)]
    # Ten slow jobs queue behind their own bound (2) and hold 2 of 4 global slots, so
    # every fast job completes while the slow target is stuck.
    await asyncio.wait_for(asyncio.gather(*fast), 2)
    assert fast_done == 10
    assert peak == {"slow": 2, "fast": 2}
    assert limits.in_flight == 2  # the two slow ones
    slow_release.set()
    await asyncio.wait_for(asyncio.gather(*slow), 2)
    assert limits.active_targets() == 0


async def test_cancelled_waiters_give_their_places_back() -> None:
    limits = TargetLimits(total=1, per_target=1)
    await limits.acquire("a")
    waiter = asyncio.create_task(limits.acquire("a"))
    other = asyncio.create_task(limits.acquire("b"))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    limits.release("a")
    await asyncio.wait_for(other, 1)
    limits.release("b")
    assert limits.active_targets() == 0


def _writer(
    flushed: list[list[int]],
    *,
    fail: set[int] | None = None,
    failures: list[Exception] | None = None,
    window: float = 0.01,
    max_items: int = 100,
) -> GroupCommit[int]:
    pending = list(failures or [])

    async def flush(items: list[int]) -> None:
        if pending:
            raise pending.pop(0)
        if fail and fail & set(items):
            raise asyncpg.DataError("invalid input syntax for type uuid")
        flushed.append(list(items))

    return GroupCommit("test", flush, is_refusal=is_refused_row, window=window, max_items=max_items)


async def test_items_added_within_the_window_share_one_flush() -> None:
    flushed: list[list[int]] = []
    writer = _writer(flushed, window=0.05)
    writer.start()
    futures = [writer.add(i) for i in range(10)]
    await asyncio.wait_for(asyncio.gather(*futures), 1)
    assert flushed == [list(range(10))]
    await writer.close(1)


async def test_a_full_batch_flushes_before_the_window() -> None:
    flushed: list[list[int]] = []
    writer = _writer(flushed, window=10, max_items=5)
    writer.start()
    futures = [writer.add(i) for i in range(5)]
    await asyncio.wait_for(asyncio.gather(*futures), 1)
    assert flushed == [[0, 1, 2, 3, 4]]
    await writer.close(1)


async def test_transient_failures_retry_the_same_items_until_they_land() -> None:
    flushed: list[list[int]] = []
    writer = _writer(flushed, failures=[ConnectionResetError("database went away")] * 2)
    writer.start()
    futures = [writer.add(i) for i in range(3)]
    await asyncio.wait_for(asyncio.gather(*futures), 5)
    assert flushed == [[0, 1, 2]]
    await writer.close(1)


async def test_an_unforeseen_failure_is_retried_never_dropped() -> None:
    # What asyncpg raised when PostgreSQL stopped in the middle of a COPY: a dropped
    # attempt row once followed it (a delivery reached its target with no SUCCESS row).
    confused = asyncpg.InternalClientError(
        "cannot switch to state 21; another operation (2) is in progress"
    )
    flushed: list[list[int]] = []
    writer = _writer(flushed, failures=[confused, RuntimeError("no idea")])
    writer.start()
    future = writer.add(1)
    await asyncio.wait_for(future, 5)
    assert flushed == [[1]]
    await writer.close(1)


@pytest.mark.parametrize(
    ("exc", "refused"),
    [
        (asyncpg.DataError("invalid input"), True),
        (asyncpg.UniqueViolationError("duplicate key"), True),
        (asyncpg.CharacterNotInRepertoireError("invalid byte sequence"), True),
        (ValueError("invalid UUID 'x'"), True),  # asyncpg encodes rows before sending
        (TypeError("expected str, got int"), True),
        (OverflowError("value out of int32 range"), True),
        (asyncpg.InternalClientError("cannot switch to state 21"), False),
        (asyncpg.ConnectionDoesNotExistError("closed in the middle of operation"), False),
        (asyncpg.AdminShutdownError("terminating connection"), False),
        (asyncpg.CannotConnectNowError("the database system is starting up"), False),
        (ConnectionRefusedError(111, "Connection refused"), False),
        (TimeoutError(), False),
        (RuntimeError("anything else"), False),
    ],
)
def test_only_rows_the_database_judged_are_refused(exc: BaseException, refused: bool) -> None:
    assert is_refused_row(exc) is refused


async def test_a_row_the_database_refuses_is_isolated_and_dropped_alone() -> None:
    flushed: list[list[int]] = []
    writer = _writer(flushed, fail={5})
    writer.start()
    futures = [writer.add(i) for i in range(8)]
    await asyncio.wait_for(asyncio.gather(*futures), 2)
    assert sorted(i for batch in flushed for i in batch) == [0, 1, 2, 3, 4, 6, 7]
    await writer.close(1)


async def test_a_cancelled_waiter_does_not_break_the_batch() -> None:
    flushed: list[list[int]] = []
    writer = _writer(flushed, window=0.05)
    writer.start()
    cancelled = writer.add(1)
    kept = writer.add(2)
    cancelled.cancel()
    await asyncio.wait_for(kept, 1)
    assert flushed == [[1, 2]]
    await writer.close(1)


async def test_close_flushes_what_is_buffered() -> None:
    flushed: list[list[int]] = []
    writer = _writer(flushed, window=10)
    writer.start()
    future = writer.add(7)
    await writer.close(1)
    assert future.done()
    assert flushed == [[7]]
    with pytest.raises(RuntimeError, match="closed"):
        writer.add(8)


async def test_the_global_bound_takes_turns_between_targets() -> None:
    # One fetch brings a burst of jobs for one target, then one for another: in arrival
    # order the burst would take every slot (and a connection each) before "b" had one.
    limits = TargetLimits(total=1, per_target=10)
    assert await limits.acquire("a")
    holders: list[str] = ["a"]
    admitted: list[str] = []

    async def take(target: str, n: int) -> None:
        await limits.acquire(target)
        holders.append(target)
        admitted.append(f"{target}{n}")

    tasks = [asyncio.create_task(take("a", n)) for n in range(3)]
    tasks.append(asyncio.create_task(take("b", 0)))
    await asyncio.sleep(0)
    while holders:
        limits.release(holders.pop(0))
        for _ in range(3):
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert admitted == ["a0", "b0", "a1", "a2"]
    assert limits.in_flight == 0
    assert limits.active_targets() == 0


async def test_waiters_give_up_on_a_stalled_target_only() -> None:
    limits = TargetLimits(total=10, per_target=1, patience=0.2)
    # Stalled: the one slot is held and nothing finishes.
    assert await limits.acquire("dead")
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiting = [asyncio.create_task(limits.acquire("dead")) for _ in range(3)]
    assert await asyncio.gather(*waiting) == [False, False, False]
    assert loop.time() - started >= 0.19
    limits.release("dead")
    assert limits.active_targets() == 0

    # Busy but answering: each holder finishes after 0.1 s, so a waiter queued behind
    # four of them waits well past the patience and still gets its turn.
    async def hold(seconds: float) -> None:
        assert await limits.acquire("busy")
        await asyncio.sleep(seconds)
        limits.release("busy")

    holders = [asyncio.create_task(hold(0.1)) for _ in range(4)]
    await asyncio.sleep(0)
    assert await asyncio.wait_for(limits.acquire("busy"), 2)
    limits.release("busy")
    await asyncio.gather(*holders)
    assert limits.active_targets() == 0


def test_the_loop_bound_shrinks_while_the_loop_lags_and_grows_only_when_it_is_what_binds() -> None:
    bound = LoopLimit(ceiling=4096)
    start = bound.limit
    assert start == START
    # Keeping up but not full: nothing to gain from a larger bound.
    assert bound.update(0.001, full=False) == start
    # Keeping up and full: grows, up to the ceiling and no further.
    grown = [bound.update(0.001, full=True) for _ in range(40)]
    assert grown[0] > start
    assert grown == sorted(grown)
    assert grown[-1] == 4096
    # Lagging: shrinks whether full or not, down to the floor and no further.
    shrunk = [bound.update(0.200, full=False) for _ in range(40)]
    assert shrunk == sorted(shrunk, reverse=True)
    assert shrunk[0] < 4096
    assert shrunk[-1] == FLOOR
    # In between the thresholds it holds: one GC pause does not make it swing back.
    assert bound.update((LAG_LOW + LAG_HIGH) / 2, full=True) == FLOOR
    # A ceiling below the floor is the ceiling.
    assert LoopLimit(ceiling=8).update(1.0, full=True) == 8


def test_slow_attempts_let_the_loop_lag_more_before_the_bound_shrinks() -> None:
    lag = 0.040  # too much for 2 ms answers, a fifth of a 200 ms one
    assert LoopLimit(ceiling=4096).update(lag, full=True, attempt=0.002) < START
    assert LoopLimit(ceiling=4096).update(lag, full=True, attempt=0.200) == START
    # It grows below the raised low mark (0.4 of the high one), not only below LAG_LOW.
    assert LoopLimit(ceiling=4096).update(0.015, full=True, attempt=0.200) > START
    assert LoopLimit(ceiling=4096).update(0.015, full=True, attempt=0.002) == START
    # However slow the targets, the loop may not lag past the ceiling (for longer than
    # one tick: see the next test).
    bound = LoopLimit(ceiling=4096)
    bound.update(LAG_CEILING * 1.1, full=True, attempt=10.0)
    assert bound.update(LAG_CEILING * 1.1, full=True, attempt=10.0) < START


def test_against_slow_targets_a_lone_late_tick_does_not_shrink_the_bound() -> None:
    slow, instant = 0.200, 0.002
    # Slow attempts: one garbage collection's pause is ridden out; two late ticks in a
    # row are a loop that cannot keep up, and shrink it.
    bound = LoopLimit(ceiling=4096)
    assert bound.update(0.300, full=True, attempt=slow) == START
    assert bound.update(0.001, full=True, attempt=slow) > START
    grown = bound.limit
    assert bound.update(0.300, full=True, attempt=slow) == grown
    assert bound.update(0.300, full=True, attempt=slow) < grown
    # Instant attempts: every late tick shrinks it, as before.
    assert LoopLimit(ceiling=4096).update(0.300, full=True, attempt=instant) < START


def test_against_slow_targets_the_bound_grows_twice_as_fast() -> None:
    slow = LoopLimit(ceiling=4096).update(0.001, full=True, attempt=0.200)
    instant = LoopLimit(ceiling=4096).update(0.001, full=True, attempt=0.002)
    assert (slow, instant) == (START + START // 4, START + START // 8)


async def test_the_typical_attempt_is_the_median_so_hanging_requests_do_not_move_it() -> None:
    limits = TargetLimits(total=4096, per_target=100, adaptive=True)
    for n in range(100):
        await limits.acquire("t")
        # One request in a hundred hangs until its 10 s timeout.
        limits.release("t", 10.0 if n == 50 else 0.150)
    limits.adapt(0.0)
    assert limits.typical_attempt == pytest.approx(0.150)
    # Later ticks move it a fifth of the way to their median; ticks without attempts
    # leave it where it is.
    for _ in range(4):
        await limits.acquire("t")
        limits.release("t", 0.050)
    limits.adapt(0.0)
    assert limits.typical_attempt == pytest.approx(0.130)
    limits.adapt(0.0)
    assert limits.typical_attempt == pytest.approx(0.130)
    # A release without a request (the breaker said no) says nothing about durations.
    await limits.acquire("t")
    limits.release("t")
    limits.adapt(0.0)
    assert limits.typical_attempt == pytest.approx(0.130)


async def test_lowering_the_bound_revokes_nothing_and_raising_it_admits_the_waiters() -> None:
    limits = TargetLimits(total=4096, per_target=100, adaptive=True)
    held = limits.limit
    for n in range(held):
        await limits.acquire(f"t{n % 50}")
    waiting = [asyncio.create_task(limits.acquire("late")) for _ in range(20)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiting)
    # The loop lags: the bound falls below what is held; nobody loses a slot, and
    # releases do not admit anyone until the holders are under the new bound.
    for _ in range(100):
        limits.adapt(1.0)
    assert limits.limit == FLOOR
    assert limits.in_flight == held
    for n in range(10):
        limits.release(f"t{n % 50}")
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiting)
    # The loop keeps up again and the bound is full: it grows and admits the waiters
    # in order, without anyone releasing.
    for _ in range(100):
        limits.adapt(0.0)
        await asyncio.sleep(0)
    assert all(w.done() for w in waiting)
    assert limits.in_flight == held - 10 + 20


async def test_a_waiter_cancelled_in_the_global_queue_does_not_block_the_next() -> None:
    limits = TargetLimits(total=1, per_target=10)
    await limits.acquire("a")
    first = asyncio.create_task(limits.acquire("b"))
    second = asyncio.create_task(limits.acquire("c"))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    limits.release("a")
    assert await asyncio.wait_for(second, 1)
    assert limits.in_flight == 1
