"""Polling for a condition in tests that watch real processes: no fixed sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_until(
    condition: Callable[[], Awaitable[bool] | bool],
    *,
    timeout: float,
    what: str,
    every: float = 0.2,
    details: Callable[[], str] | None = None,
) -> float:
    """Poll ``condition`` until true; returns the seconds it took. Raises on the deadline."""
    started = time.monotonic()
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            extra = f"\n{details()}" if details else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        await asyncio.sleep(every)
