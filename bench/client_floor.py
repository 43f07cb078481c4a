"""The HTTP client's own floor: a bare aiohttp loop against the ``targets`` farm.

How much of the gap between slow and instant targets is the client library's, not
Hookstream's: the same 1,000-port farm (``tests.support.target_farm``), the dispatcher's
own session (``make_session``: connector, SSRF-guarded resolver, timeout) and garbage
collection settings (``tune_gc``), and nothing else (no broker, no database, no
signing). One child process per shape, each printing one
JSON line:

- ``instant``: the farm answers at once, 64 requests open (enough to saturate the loop);
- ``slow``: median 150 ms, sigma 0.6, no hangs, ``SLOW_OPEN`` requests open (about what
  the dispatcher's adaptive bound holds there).

Each request goes to the next target round-robin. CPU per request is the child's own.

Run alone: ``python -m bench.client_floor instant`` (or ``slow``).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import uvloop

from services.dispatcher.__main__ import tune_gc
from services.dispatcher.sender import make_session
from shared.settings import Settings
from tests.support.target_farm import TargetFarm

TARGETS = 1000
REQUESTS = int(os.environ.get("BENCH_CLIENT_FLOOR_N", "30000"))
INSTANT_OPEN = 64
SLOW_OPEN = 2000
PAYLOAD = b'{"type": "order.created", "data": {"n": 1}}' * 7  # ~300 bytes, as the bench's


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _drive(urls: list[str], open_requests: int) -> dict[str, float]:
    # Loopback targets: allowed here as in the tests, never by default.
    async with make_session(Settings(allow_private_targets=True)) as session:

        async def warm(url: str) -> None:
            async with session.post(url, data=b"{}") as resp:
                await resp.read()

        # A connection per target first, as the dispatcher's warm-up; all at once, or
        # against slow targets the warm-up alone would take 1,000 x 180 ms.
        await asyncio.gather(*(warm(url) for url in urls))
        numbers = iter(range(REQUESTS))
        headers = {"content-type": "application/json"}

        async def worker() -> None:
            for n in numbers:
                async with session.post(urls[n % len(urls)], data=PAYLOAD, headers=headers) as r:
                    await r.read()

        cpu, started = _cpu(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(open_requests)))
        cpu, took = _cpu() - cpu, time.perf_counter() - started
    return {"cpu_us": cpu / REQUESTS * 1e6, "rate": REQUESTS / took}


def measure(shape: str) -> dict[str, Any]:
    """One shape in this process (the farm is a child of it)."""
    slow = shape == "slow"
    farm_args: dict[str, Any] = {"median_ms": 150, "sigma": 0.6} if slow else {}
    with TargetFarm(TARGETS, **farm_args) as farm:
        urls = [farm.url(n) for n in range(TARGETS)]
        tune_gc()
        result = uvloop.run(_drive(urls, SLOW_OPEN if slow else INSTANT_OPEN))
        result["connections"] = farm.stats().get("connections", 0)
    return {"shape": shape, **result}


def in_child(shape: str) -> dict[str, Any]:
    """``measure`` in a fresh interpreter: nothing of the caller's heap or loop."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.client_floor", shape],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1])))
