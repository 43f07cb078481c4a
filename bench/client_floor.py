"""The HTTP client's own floor: a bare loop of the dispatcher's client against the
``targets`` farm.

How much of the gap between slow and instant targets is the HTTP client's, not the rest
of Hookstream's: the same 1,000-port farm (``tests.support.target_farm``), the
dispatcher's own client (``make_client``: connection pool, SSRF-guarded resolver,
timeout; ``aiohttp`` for its predecessor, aiohttp's session with the same settings) and
garbage collection settings (``tune_gc``), and nothing else (no broker, no database, no
signing). One child process per client and shape, each printing one JSON line:

- ``instant``: the farm answers at once, 64 requests open (enough to saturate the loop);
- ``wide``: the farm answers at once, ``SLOW_OPEN`` requests open: what holding that many
  open costs by itself (every part of the loop's work gets dearer as the memory it
  touches grows), apart from waiting;
- ``slow``: median 150 ms, sigma 0.6, no hangs, ``SLOW_OPEN`` requests open (about what
  the dispatcher's adaptive bound holds there). This loop is not CPU-bound (~45 % of a
  core): woken for a few answers at a time, it spends more per request than a busy one.

Each request goes to the next target round-robin. CPU per request is the child's own.

Run alone: ``python -m bench.client_floor hookstream instant`` (or ``aiohttp``; ``wide``,
``slow``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import uvloop
from aiohttp.resolver import DefaultResolver
from yarl import URL

from bench.child import json_child, own_cpu
from services.dispatcher.__main__ import tune_gc
from services.dispatcher.sender import make_client, post
from shared.settings import Settings
from shared.urlsafety import GuardedResolver
from tests.support.target_farm import TargetFarm

TARGETS = 1000
REQUESTS = int(os.environ.get("BENCH_CLIENT_FLOOR_N", "30000"))
CLIENTS = ("hookstream", "aiohttp")
SHAPES = ("instant", "wide", "slow")
INSTANT_OPEN = 64
SLOW_OPEN = 2000
PAYLOAD = b'{"type": "order.created", "data": {"n": 1}}' * 7  # ~300 bytes, as the bench's


Send = Callable[[str, bytes], Awaitable[object]]


@asynccontextmanager
async def _sender(client: str) -> AsyncIterator[Send]:
    # Loopback targets: allowed here as in the tests, never by default.
    settings = Settings(allow_private_targets=True)
    headers = {"content-type": "application/json"}
    if client == "aiohttp":
        connector = aiohttp.TCPConnector(
            limit=settings.max_in_flight,
            limit_per_host=settings.max_in_flight_per_target,
            resolver=GuardedResolver(DefaultResolver(), allow_private=True),
            ttl_dns_cache=60,
            keepalive_timeout=30,
        )
        timeout = aiohttp.ClientTimeout(total=settings.delivery_timeout)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
        ) as session:

            async def send_aiohttp(url: str, body: bytes) -> object:
                async with session.post(url, data=body, headers=headers) as resp:
                    return await resp.read()

            yield send_aiohttp
        return
    http = make_client(settings)
    try:

        async def send(url: str, body: bytes) -> object:
            return await post(http, URL(url), body, headers, excerpt_bytes=256)

        yield send
    finally:
        await http.close()


async def _drive(client: str, urls: list[str], open_requests: int) -> dict[str, float]:
    async with _sender(client) as send:
        # A connection per target first, as the dispatcher's warm-up; all at once, or
        # against slow targets the warm-up alone would take 1,000 x 180 ms.
        await asyncio.gather(*(send(url, b"{}") for url in urls))
        numbers = iter(range(REQUESTS))

        async def worker() -> None:
            for n in numbers:
                await send(urls[n % len(urls)], PAYLOAD)

        cpu, started = own_cpu(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(open_requests)))
        cpu, took = own_cpu() - cpu, time.perf_counter() - started
    return {"cpu_us": cpu / REQUESTS * 1e6, "rate": REQUESTS / took}


def measure(client: str, shape: str) -> dict[str, Any]:
    """One client and shape in this process (the farm is a child of it)."""
    slow = shape == "slow"
    farm_args: dict[str, Any] = {"median_ms": 150, "sigma": 0.6} if slow else {}
    with TargetFarm(TARGETS, **farm_args) as farm:
        urls = [farm.url(n) for n in range(TARGETS)]
        tune_gc()
        open_requests = INSTANT_OPEN if shape == "instant" else SLOW_OPEN
        result = uvloop.run(_drive(client, urls, open_requests))
        result["connections"] = farm.stats().get("connections", 0)
    return {"client": client, "shape": shape, **result}


def in_child(client: str, shape: str) -> dict[str, Any]:
    """``measure`` in a fresh interpreter: nothing of the caller's heap or loop."""
    return json_child("bench.client_floor", client, shape)


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], sys.argv[2])))
