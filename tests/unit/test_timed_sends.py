"""``bench.timed_sends``: the ``bench targets`` diagnostic whose client sends nothing. It
must behave as the client would towards the delivery stage (an answer, or the client's
own ``TimeoutError`` for a hang), still build the request, and be started with the
shape's draws."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiohttp.resolver import DefaultResolver
from yarl import URL

from bench import targets, timed_sends
from services.dispatcher import http1
from shared.urlsafety import GuardedResolver
from tests.support.target_farm import Delays

URL_ = URL("http://127.0.0.1:9/hook")


def client() -> http1.Http1Client:
    # Never connects: the timed post replaces the only method that would.
    return http1.Http1Client(
        GuardedResolver(DefaultResolver(), allow_private=False), allow_private=False, timeout=10
    )


async def test_an_instant_draw_answers_200_with_the_excerpt_asked_for() -> None:
    post = timed_sends.timed_post(Delays(0, 0.6, 0.0, 0, 13), timeout=10)
    answer = await post(client(), URL_, b"{}", {"webhook-id": "msg_1"}, excerpt_bytes=256)
    assert answer == http1.Answer(200, None, b"ok")
    assert (await post(client(), URL_, b"{}", {}, excerpt_bytes=0)).excerpt is None


async def test_a_hang_ends_as_the_clients_timeout_not_at_the_hangs_length() -> None:
    loop = asyncio.get_running_loop()
    post = timed_sends.timed_post(Delays(0.001, 0.6, 1.0, 12.0, 13), timeout=0.02)
    started = loop.time()
    with pytest.raises(TimeoutError):
        await post(client(), URL_, b"{}", {}, excerpt_bytes=0)
    assert 0.02 <= loop.time() - started < 5


async def test_the_request_is_still_built_and_refused_as_the_client_would() -> None:
    post = timed_sends.timed_post(Delays(0, 0.6, 0.0, 0, 13), timeout=10)
    with pytest.raises(http1.InvalidRequest):
        await post(client(), URL_, b"{}", {"x-bad": "a\r\nb"}, excerpt_bytes=0)


def test_the_diagnostic_shapes_start_the_dispatcher_with_their_draws() -> None:
    slow = timed_sends.parse([*targets.SLOW_TIMED.launcher(4321)[1:], "services.x"])
    assert (slow.median_ms, slow.sigma, slow.hang_fraction) == (150, 0.6, 0.01)
    assert (slow.hang_ms, slow.timeout, slow.port, slow.module) == (12_000, 10, 4321, "services.x")
    instant = timed_sends.parse([*targets.INSTANT_TIMED.launcher(1)[1:], "services.x"])
    assert (instant.median_ms, instant.hang_fraction) == (0, 0)
    assert targets.SLOW.launcher(7) == ("bench.stalls", "probe", "--port", "7")


async def test_waits_end_in_the_order_they_fall_due_and_a_cancelled_one_is_skipped() -> None:
    loop = asyncio.get_running_loop()
    waits = timed_sends.Waits()
    ended: list[str] = []

    def note(name: str) -> Callable[[object], None]:
        return lambda _: ended.append(name)

    for name, delay in (("late", 0.03), ("early", 0.0), ("middle", 0.015)):
        waits.after(loop, delay).add_done_callback(note(name))
    waits.after(loop, 0.0).cancel()
    await waits.after(loop, 0.04)
    assert ended == ["early", "middle", "late"]
