"""Garbage-collection pauses: how long each collection stopped this process.

A collection stops the whole process, event loop included, for as long as it scans; a
full one scans every tracked object that is not frozen, so a heap that grows makes the
pauses grow with it. That shows up as a latency tail nothing else in the process
explains. Each collection is timed (two clock reads) into
``hookstream_gc_pause_seconds{generation}``, and one longer than ``SLOW`` is logged with
its generation and the CPU it used, so a pause in a latency graph can be matched to its
cause.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from shared.logging import get_logger
from shared.metrics import GC_PAUSE

log = get_logger("gc")

# Young collections take well under a millisecond; a full one over a few hundred thousand
# objects takes tens. Past this, it is worth a line.
SLOW = 0.05


class _Timer:
    def __init__(self) -> None:
        self._started = 0.0
        self._cpu = 0.0
        self._by_generation = [GC_PAUSE.labels(str(g)) for g in range(3)]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            self._cpu = time.thread_time()
            return
        took = time.perf_counter() - self._started
        generation = info["generation"]
        self._by_generation[generation].observe(took)
        if took > SLOW:
            log.warning(
                "slow garbage collection",
                generation=generation,
                took_ms=round(took * 1000, 1),
                # Much less than took_ms: the process was waiting for a core, not scanning.
                cpu_ms=round((time.thread_time() - self._cpu) * 1000, 1),
                collected=info["collected"],
                uncollectable=info["uncollectable"],
                frozen=gc.get_freeze_count(),
            )


_installed: _Timer | None = None


def watch() -> None:
    """Time every collection of this process from now on (idempotent)."""
    global _installed
    if _installed is None:
        _installed = _Timer()
        gc.callbacks.append(_installed)
