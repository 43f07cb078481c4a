"""The runtime's own floor: what an asyncio loop spends per job as more jobs are in flight
at once, each doing the dispatcher's own work on it but no I/O.

Against slow targets the dispatcher holds ~3,000 deliveries in flight where it holds
~200 against instant ones (Little's law: the same rate times ~180 ms instead of ~25).
Sustained, its CPU per delivery is higher by a fifth or more even when its client sends
nothing (``bench targets``' sustained "no sockets" rows). Is that what CPython pays
whenever a job's state has gone cold by the time it is touched again? This loop answers
that: ``OPEN`` jobs in flight, each decoding a delivery record (``DeliveryJob.decode``),
signing its request for one of 1,000 subscriptions (``request_headers``: both
signatures, as the dispatcher sends them), building the request's bytes, then waiting
for the next tick of one loop timer and building a small row from its state. A three-deep
coroutine chain and a future per wait, as a delivery has. Nothing else runs: no broker,
database or sockets.

Until 2026-12-07 the jobs were toys of a delivery's shape (a header dict, a body and a
UUID, no decoding or signing); their CPU per job rose by 1.6 µs from 200 to 3,000 in
flight. With the dispatcher's own code on the jobs, four alternated runs of each count
(100,000 jobs each) gave 24.7-29.1 µs per job at 200 in flight, 26.0-29.6 at 3,000 and
27.0-29.9 at 10,000, each job holding ~3.6 KB while it waits.

Those jobs were answered in the order they waited, which is how instant targets answer
but not slow ones: a log-normal delay (sigma 0.6) puts a request's answer anywhere among
those of the requests sent within ~200 ms of it. In order, the loop touches the jobs'
state in the order it was allocated, neighbours in memory one after another, which
caches and prefetching serve well; in random order each job's state is a fresh miss.
So each count also runs in random ``ORDERS``: the jobs due at a tick are answered
shuffled. Three alternated runs of each (100,000 jobs, 2026-12-08): at 200 in
flight, 26.3-27.0 µs per job in random order against 24.4-28.0 in order (-1.3 to +1.9);
at 3,000, 32.4-34.6 against 25.8-26.9 (+6.0 to +8.1); at 10,000, 34.1-37.8 against
25.5-28.3 (+7.9 to +10.8). With 3,000 jobs in flight or more, a job's state gone cold
costs 6-11 µs when it is touched again in random order, with no socket and nothing but
the dispatcher's own per-job code on it.

Every job waits until the next tick (1 ms), whatever ``OPEN`` is: a saturated loop holds
``OPEN`` jobs in flight either way (Little's law again), and the time a job's state sits
untouched is the time the other ``OPEN - 1`` jobs take to run, as in the dispatcher.
Waits are not a heap: every job waits alike, so their order is their deadlines', and a
heap's deeper sift with more jobs would be a cost of this model, not of holding jobs.
Both orders shuffle the same number of items each tick (the ordered one shuffles a list
of indices it does not use), so the shuffle's own cost is in both. The garbage collector
is set as the dispatcher sets it (``tune_gc``).

One child process per count and order; each prints one JSON line with the CPU per job
(the child's own user and system time over ``JOBS`` jobs, after a warm-up with as many
in flight) and the bytes a job holds while it waits (``tracemalloc``, in a separate
pass: tracing slows every allocation).

Run alone: ``python -m bench.inflight_floor 3000 random`` (or ``ordered``).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import os
import random
import sys
import time
import tracemalloc
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any, NamedTuple

import uvloop

from bench.child import json_child, own_cpu
from services.dispatcher.__main__ import tune_gc
from services.dispatcher.delivery import request_headers
from shared.records import DeliveryJob
from shared.signing import standard_webhooks_key

JOBS = int(os.environ.get("BENCH_INFLIGHT_N", "200000"))
# Instant targets, slow ones, and more; each in both orders.
COUNTS = (200, 3000, 10_000)
# Answered in the order they waited (instant targets), or shuffled (slow ones).
ORDERS = ("ordered", "random")
TICK_S = 0.001
SUBSCRIPTIONS = 1000


class Subscription(NamedTuple):
    """One subscription's delivery record, as fetched, and its signing secrets."""

    value: bytes
    headers: list[tuple[str, bytes]]
    secret: str
    signing_key: bytes  # the dispatcher keeps these in an LRU cache: built once


def subscriptions() -> list[Subscription]:
    subs = []
    for n in range(SUBSCRIPTIONS):
        job = DeliveryJob(
            delivery_id=uuid.uuid4(), event_id=uuid.uuid4(), subscription_id=uuid.uuid4(),
            event_type="order.created", attempt=1, first_received_at=datetime.now(UTC),
            content_type="application/json",
            body=b'{"type": "order.created", "data": {"n": %d}}' % n * 7,
        )  # fmt: skip
        secret = f"whsec-bench-{n}"
        subs.append(
            Subscription(job.body, list(job.headers()), secret, standard_webhooks_key(secret))
        )
    return subs


class Ticks:
    """Futures resolved at the next tick of one loop timer: oldest first, or shuffled."""

    def __init__(self, order: str = "ordered") -> None:
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, not {order!r}")
        self._shuffled = order == "random"
        self._random = random.Random(13)
        self._due: deque[asyncio.Future[None]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def next(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        waiting: asyncio.Future[None] = loop.create_future()
        self._due.append(waiting)
        if self._timer is None:
            self._timer = loop.call_later(TICK_S, self._tick, loop)
        return waiting

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        due = self._due
        # Those due now; ones added meanwhile wait a tick.
        now = [due.popleft() for _ in range(len(due))]
        if self._shuffled:
            self._random.shuffle(now)
        else:
            self._random.shuffle(list(range(len(now))))  # about the same cost, order kept
        for waiting in now:
            waiting.set_result(None)
        self._timer = loop.call_later(TICK_S, self._tick, loop) if due else None


async def _send(
    job: DeliveryJob, sub: Subscription, ticks: Ticks, loop: asyncio.AbstractEventLoop
) -> int:
    headers = request_headers(
        job, timestamp=int(time.time()), secret=sub.secret, signing_key=sub.signing_key
    )
    head = "".join([f"{k}: {v}\r\n" for k, v in headers.items()]).encode() + job.body
    await ticks.next(loop)
    return len(head)


async def _attempt(
    job: DeliveryJob, sub: Subscription, ticks: Ticks, loop: asyncio.AbstractEventLoop
) -> dict[str, Any]:
    size = await _send(job, sub, ticks, loop)
    return {"id": str(job.delivery_id), "attempt": job.attempt, "n": size}


async def _deliver(
    n: int, subs: list[Subscription], ticks: Ticks, loop: asyncio.AbstractEventLoop
) -> None:
    sub = subs[n % len(subs)]
    row = await _attempt(DeliveryJob.decode(sub.value, sub.headers), sub, ticks, loop)
    assert row["n"] > 0


async def _run(open_jobs: int, jobs: int, subs: list[Subscription], order: str) -> None:
    loop = asyncio.get_running_loop()
    ticks = Ticks(order)
    numbers = iter(range(jobs))

    async def worker() -> None:
        for n in numbers:
            await _deliver(n, subs, ticks, loop)

    await asyncio.gather(*(worker() for _ in range(open_jobs)))


async def _held(open_jobs: int, subs: list[Subscription]) -> float:
    """Bytes a job holds while it waits: traced memory with ``open_jobs`` waiting."""
    loop = asyncio.get_running_loop()
    ticks = Ticks()
    counter = itertools.count()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tasks = [loop.create_task(_deliver(next(counter), subs, ticks, loop)) for _ in range(open_jobs)]
    await asyncio.sleep(0)  # every job built and waiting for the tick
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    await asyncio.gather(*tasks)
    return held / open_jobs


def measure(open_jobs: int, order: str) -> dict[str, Any]:
    subs = subscriptions()
    tune_gc()
    # Warm-up: the heap grown, code warm.
    uvloop.run(_run(open_jobs, open_jobs * 10, subs, order))
    gc.collect()
    cpu, took = own_cpu(), time.perf_counter()
    uvloop.run(_run(open_jobs, JOBS, subs, order))
    cpu, took = own_cpu() - cpu, time.perf_counter() - took
    return {
        "open": open_jobs,
        "order": order,
        "cpu_us": cpu / JOBS * 1e6,
        "rate": JOBS / took,
        "bytes_per_job": uvloop.run(_held(min(open_jobs, 1000), subs)),
    }


def in_child(open_jobs: int, order: str) -> dict[str, Any]:
    """``measure`` in a fresh interpreter: nothing of the caller's heap or loop."""
    return json_child("bench.inflight_floor", str(open_jobs), order)


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "ordered")))
