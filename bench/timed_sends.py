"""A dispatcher whose HTTP client sends nothing: each request waits what the target farm
would have drawn for it, then answers 200. A diagnostic for ``bench targets``.

Against slow targets the dispatcher spends more CPU per delivery than against instant
ones. Either the job's own path costs more when it waits 150 ms instead of ~1 ms (its
task, coroutines and state touched again once they have gone cold), or the sockets do
(the client's connections and parser, the kernel's TCP, the farm beside it on the same
cores). The same two shapes without sockets leave the job's path alone: if slow and
instant then run alike, the gap is the sockets'.

``python -m bench.timed_sends --median-ms 150 --sigma 0.6 --hang-fraction 0.01
--hang-ms 12000 --timeout 10 --port P services.dispatcher`` runs the dispatcher as
``python -m bench.stalls probe --port P services.dispatcher`` does, with
``Http1Client.post`` replaced. What comes before the socket still runs: the request's
endpoint is worked out and its bytes built. The delays come from the farm's own draw
(``tests.support.target_farm.Delays``, the same seed). A draw at or past ``--timeout``
waits the timeout and raises ``TimeoutError``, as the client does when a target hangs;
``--median-ms 0`` answers at the next tick of the waits' timer (``Waits``). Nothing is
sent anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import sys
from collections.abc import Awaitable, Callable

from yarl import URL

from bench import stalls
from services.dispatcher import http1
from tests.support.target_farm import Delays

Post = Callable[..., Awaitable[http1.Answer]]


# How often the waits are looked at: an answer comes up to this much after its delay.
TICK_S = 0.001


class Waits:
    """Futures resolved once their delay is up, by one loop timer that ticks while any
    waits. Not a timer each (``asyncio.sleep``): with 2,000 requests open, that timer
    cost the client 8-16 µs per request (``http1._Deadlines``), and it would weigh
    on the slow shape alone. Instant draws wait for the next tick too, so both shapes
    wait the same way."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, asyncio.Future[None]]] = []  # a heap
        self._order = itertools.count()
        self._ticking: asyncio.TimerHandle | None = None

    def after(self, loop: asyncio.AbstractEventLoop, delay: float) -> asyncio.Future[None]:
        waiting: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._due, (loop.time() + delay, next(self._order), waiting))
        if self._ticking is None:
            self._ticking = loop.call_later(TICK_S, self._tick, loop)
        return waiting

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now, due = loop.time(), self._due
        while due and due[0][0] <= now:
            waiting = heapq.heappop(due)[2]
            if not waiting.done():  # its request may have been cancelled meanwhile
                waiting.set_result(None)
        self._ticking = loop.call_later(TICK_S, self._tick, loop) if due else None


def timed_post(delays: Delays, timeout: float) -> Post:
    """An ``Http1Client.post`` that waits a drawn delay instead of sending."""
    waits = Waits()

    async def post(
        client: http1.Http1Client,
        url: URL,
        body: bytes,
        headers: dict[str, str],
        *,
        excerpt_bytes: int,
    ) -> http1.Answer:
        # Built as the client builds it (and refused as it would be), then not sent.
        _ = http1.request_head(client.endpoint(url), headers, len(body)) + body
        delay, _ = delays.draw()
        await waits.after(asyncio.get_running_loop(), min(delay, timeout))
        if delay >= timeout:
            raise TimeoutError
        return http1.Answer(200, None, b"ok"[:excerpt_bytes] if excerpt_bytes else None)

    return post


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.timed_sends")
    Delays.add_arguments(parser)  # the farm's own flags
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("module")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    http1.Http1Client.post = timed_post(Delays.of(args), args.timeout)  # type: ignore[method-assign,assignment]
    stalls.probe(args.port, args.module, args.args)


if __name__ == "__main__":
    main(sys.argv[1:])
