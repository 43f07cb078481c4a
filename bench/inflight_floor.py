"""The runtime's own floor: what a bare asyncio loop spends per job as more jobs are in
flight at once, with no socket and nothing of Hookstream.

Against slow targets the dispatcher holds ~3,000 deliveries in flight where it holds
~200 against instant ones (Little's law: the same rate times ~180 ms instead of ~25).
Sustained, its CPU per delivery is higher by a fifth or more even when its client sends
nothing (``bench targets``' sustained "no sockets" rows). Is that Hookstream's code, or
what CPython pays whenever a job's state has gone cold by the time it is touched again?
This loop answers the second half: jobs shaped like a delivery (an object with a header
dict, a ~300-byte body and a UUID, a three-deep coroutine chain, a future per wait),
``OPEN`` of them in flight, each waiting for the next tick of one loop timer and then
building a small row from its state. Nothing else runs: no broker, database, signing or
sockets.

Every job waits until the next tick (1 ms), whatever ``OPEN`` is: a saturated loop holds
``OPEN`` jobs in flight either way (Little's law again), and the time a job's state sits
untouched is the time the other ``OPEN - 1`` jobs take to run, as in the dispatcher.
Waits are a FIFO, not a heap: every job waits alike, so their order is their deadlines',
and a heap's deeper sift with more jobs would be a cost of this model, not of holding
jobs. The garbage collector is set as the dispatcher sets it (``tune_gc``).

One child process per count; each prints one JSON line with the CPU per job (the child's
own user and system time over ``JOBS`` jobs, after a warm-up with as many in flight) and the
bytes a job holds while it waits (``tracemalloc``, in a separate pass: tracing slows
every allocation).

Run alone: ``python -m bench.inflight_floor 3000``.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import os
import sys
import time
import tracemalloc
import uuid
from collections import deque
from typing import Any

import uvloop

from bench.child import json_child, own_cpu
from services.dispatcher.__main__ import tune_gc

JOBS = int(os.environ.get("BENCH_INFLIGHT_N", "200000"))
# Instant targets, slow ones, and more.
COUNTS = (200, 3000, 10_000)
TICK_S = 0.001
HEADERS = 8


class Job:
    __slots__ = ("attempt", "body", "headers", "id", "subscription")

    def __init__(self, n: int) -> None:
        self.id = uuid.uuid4()
        self.attempt = 1
        self.subscription = str(n % 1000)
        self.headers = {f"header-{k}": f"value-{n}-{k}" * 3 for k in range(HEADERS)}
        self.body = b'{"type": "order.created", "data": {"n": %d}}' % n * 7


class Ticks:
    """Futures resolved at the next tick of one loop timer, oldest first."""

    def __init__(self) -> None:
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
        for _ in range(len(due)):  # those due now; ones added meanwhile wait a tick
            due.popleft().set_result(None)
        self._timer = loop.call_later(TICK_S, self._tick, loop) if due else None


async def _send(job: Job, ticks: Ticks, loop: asyncio.AbstractEventLoop) -> int:
    head = "".join([f"{k}: {v}\r\n" for k, v in job.headers.items()]).encode() + job.body
    await ticks.next(loop)
    return len(head)


async def _attempt(job: Job, ticks: Ticks, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    size = await _send(job, ticks, loop)
    return {"id": str(job.id), "attempt": job.attempt, "sub": job.subscription, "n": size}


async def _deliver(n: int, ticks: Ticks, loop: asyncio.AbstractEventLoop) -> None:
    row = await _attempt(Job(n), ticks, loop)
    assert row["n"] > 0


async def _run(open_jobs: int, jobs: int) -> None:
    loop = asyncio.get_running_loop()
    ticks = Ticks()
    numbers = iter(range(jobs))

    async def worker() -> None:
        for n in numbers:
            await _deliver(n, ticks, loop)

    await asyncio.gather(*(worker() for _ in range(open_jobs)))


async def _held(open_jobs: int) -> float:
    """Bytes a job holds while it waits: traced memory with ``open_jobs`` waiting."""
    loop = asyncio.get_running_loop()
    ticks = Ticks()
    counter = itertools.count()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tasks = [loop.create_task(_deliver(next(counter), ticks, loop)) for _ in range(open_jobs)]
    await asyncio.sleep(0)  # every job built and waiting for the tick
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    await asyncio.gather(*tasks)
    return held / open_jobs


def measure(open_jobs: int) -> dict[str, Any]:
    tune_gc()
    uvloop.run(_run(open_jobs, open_jobs * 10))  # warm-up: the heap grown, code warm
    gc.collect()
    cpu, took = own_cpu(), time.perf_counter()
    uvloop.run(_run(open_jobs, JOBS))
    cpu, took = own_cpu() - cpu, time.perf_counter() - took
    return {
        "open": open_jobs,
        "cpu_us": cpu / JOBS * 1e6,
        "rate": JOBS / took,
        "bytes_per_job": uvloop.run(_held(min(open_jobs, 1000))),
    }


def in_child(open_jobs: int) -> dict[str, Any]:
    """``measure`` in a fresh interpreter: nothing of the caller's heap or loop."""
    return json_child("bench.inflight_floor", str(open_jobs))


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]))))
