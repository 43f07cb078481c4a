"""The HTTP client's request deadlines (``http1._Deadlines``): one loop timer for the
requests of a client, which share one timeout, instead of a timer per request."""

from __future__ import annotations

import asyncio

from services.dispatcher import http1


def answer(loop: asyncio.AbstractEventLoop) -> asyncio.Future[http1.Answer]:
    return loop.create_future()


async def failed_at(loop: asyncio.AbstractEventLoop, future: asyncio.Future[http1.Answer]) -> float:
    """When ``future`` failed with the deadline's ``TimeoutError`` (loop time)."""
    try:
        await future
    except TimeoutError:
        return loop.time()
    raise AssertionError("the answer came; it should have timed out")


async def test_requests_time_out_at_their_deadlines_and_answered_ones_do_not() -> None:
    loop = asyncio.get_running_loop()
    deadlines = http1._Deadlines()
    start = loop.time()
    first, second, third = answer(loop), answer(loop), answer(loop)
    deadlines.watch(loop, start + 0.05, first)
    answered = deadlines.watch(loop, start + 0.10, second)
    deadlines.watch(loop, start + 0.15, third)
    second.set_result(http1.Answer(200, None, None))
    deadlines.forget(answered)

    first_at, third_at = await asyncio.gather(failed_at(loop, first), failed_at(loop, third))

    # Never before its deadline; late only by the loop's turn (generous for a busy CI).
    assert start + 0.05 <= first_at < start + 1.0
    assert start + 0.15 <= third_at < start + 1.1
    assert second.result().status == 200
    deadlines.close()


async def test_a_request_sent_after_later_deadlines_is_not_held_behind_them() -> None:
    """A request that waited for a new connection is sent after requests with later
    deadlines; it must still time out at its own."""
    loop = asyncio.get_running_loop()
    deadlines = http1._Deadlines()
    start = loop.time()
    later, earlier = answer(loop), answer(loop)
    deadlines.watch(loop, start + 3, later)
    deadlines.watch(loop, start + 0.05, earlier)

    at = await failed_at(loop, earlier)

    assert start + 0.05 <= at < start + 1.0
    assert not later.done()
    deadlines.close()


async def test_answered_requests_leave_nothing_behind() -> None:
    """An answered request's entry goes at once, even behind a request that never
    answers: what waits for a timeout is the unanswered requests only."""
    loop = asyncio.get_running_loop()
    deadlines = http1._Deadlines()
    hung = answer(loop)
    deadlines.watch(loop, loop.time() + 0.05, hung)
    for _ in range(1000):
        future = answer(loop)
        watched = deadlines.watch(loop, loop.time() + 10, future)
        future.set_result(http1.Answer(200, None, None))
        deadlines.forget(watched)
    assert list(deadlines._due) == [hung]

    await failed_at(loop, hung)

    assert len(deadlines._due) == 0
    for _ in range(1000):
        future = answer(loop)
        watched = deadlines.watch(loop, loop.time() + 10, future)
        future.set_result(http1.Answer(200, None, None))
        deadlines.forget(watched)
    assert len(deadlines._due) == 0
    deadlines.close()


async def test_many_requests_due_together_all_time_out() -> None:
    """Requests whose deadlines have all passed when the timer fires (a target that
    stopped answering) time out together; the first still pending keeps the timer."""
    loop = asyncio.get_running_loop()
    deadlines = http1._Deadlines()
    start = loop.time()
    due = [answer(loop) for _ in range(500)]
    for future in due:
        deadlines.watch(loop, start + 0.05, future)
    later = answer(loop)
    deadlines.watch(loop, start + 0.3, later)

    times = await asyncio.gather(*(failed_at(loop, future) for future in due))

    assert all(start + 0.05 <= at < start + 1.0 for at in times)
    assert not later.done()
    assert list(deadlines._due) == [later]
    assert start + 0.3 <= await failed_at(loop, later) < start + 1.3
    deadlines.close()


async def test_a_request_given_up_before_its_answer_is_forgotten() -> None:
    """A cancelled request (its caller gave up) is forgotten like an answered one: it
    does not time out later, and nothing behind it waits for it."""
    loop = asyncio.get_running_loop()
    deadlines = http1._Deadlines()
    start = loop.time()
    cancelled, after = answer(loop), answer(loop)
    gone = deadlines.watch(loop, start + 0.05, cancelled)
    deadlines.watch(loop, start + 0.10, after)
    cancelled.cancel()
    deadlines.forget(gone)

    at = await failed_at(loop, after)

    assert start + 0.10 <= at < start + 1.1
    assert cancelled.cancelled()
    deadlines.close()


async def test_closed_deadlines_time_nothing_out() -> None:
    """At close the client aborts its connections itself: no timeout fires after."""
    loop = asyncio.get_running_loop()
    deadlines, control = http1._Deadlines(), http1._Deadlines()
    pending, overdue = answer(loop), answer(loop)
    # Both already past their deadlines, the closed one's earlier: had it not been
    # closed, its timer would have fired by the time the control's has.
    deadlines.watch(loop, loop.time() - 1, pending)
    control.watch(loop, loop.time() - 0.5, overdue)
    deadlines.close()

    await failed_at(loop, overdue)

    assert not pending.done()
