"""Reading a service's Prometheus endpoint from tests."""

from __future__ import annotations

import asyncio
import re
import time

import httpx

CACHE_LOADED = "hookstream_subscription_cache_loaded_timestamp_seconds"


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text format (0 when absent)."""
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = (
        re.escape(name) + (r"\{" + re.escape(label_text) + r"\}" if labels else "") + r" (\S+)"
    )
    match = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def wait_metric(
    url: str, name: str, minimum: float, timeout: float = 30, **labels: str
) -> str:
    """Poll ``url`` until the series reaches ``minimum``; returns the whole page."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as c:
        text = ""
        while True:
            try:
                text = (await c.get(url)).text
            except httpx.TransportError:  # the worker is still starting
                pass
            else:
                if sample(text, name, **labels) >= minimum:
                    return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}{labels} never reached {minimum}:\n{text[-3000:]}")
            await asyncio.sleep(0.2)


async def wait_cache_loaded(metrics_port: int, since: float) -> None:
    """Until the process's subscription cache has re-read the table after ``since``
    (``time.time()`` of the last change it must see)."""
    await wait_metric(f"http://127.0.0.1:{metrics_port}/metrics", CACHE_LOADED, since)
