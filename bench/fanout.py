"""Fan-out: one event to 1,000 subscriptions, time until all 1,000 are delivered.

A real dispatcher process, 1,000 subscriptions on one local sink process (so the
per-target bound, 64, applies to all of them: a worst case for fan-out, since real
subscribers are on many hosts). The event is produced to the events topic exactly as
``POST /events`` would; the clock starts at its ``received_at``.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.dispatch import DispatchWorld
from tests.support.procs import ServiceProcess
from tests.support.stack import IsolatedStack
from tests.support.targets import SinkProcess

SECTION = "fanout"
SUBSCRIBERS = 1000
ROUNDS = 5


def row(metric: str, value: float | int, unit: str, note: str = "") -> dict[str, Any]:
    return {"section": SECTION, "metric": metric, "value": value, "unit": unit, "note": note}


async def _rounds(stack: IsolatedStack, sink: SinkProcess) -> list[dict[str, float]]:
    async with DispatchWorld(stack.settings()) as world:
        await world.add_subscriptions(sink.url("/fan"), SUBSCRIBERS, event_types=["bench.fan"])
        await asyncio.sleep(6)  # past the cache TTL: the dispatcher's snapshot has them all
        results = []
        for n in range(ROUNDS):
            sink.reset()
            event = world.event("bench.fan", b'{"round": %d}' % n)
            await world.produce_event(event)
            started = event.received_at.timestamp()
            async with asyncio.timeout(60):
                while (stats := sink.stats())["unique"] < SUBSCRIBERS:
                    await asyncio.sleep(0.01)
            delivered = stats["last"] - started
            async with asyncio.timeout(60):
                while (
                    await world.scalar(
                        "SELECT count(*) FROM delivery_attempts WHERE event_id = :e "
                        "AND status = 'SUCCESS'",
                        e=event.event_id,
                    )
                    < SUBSCRIBERS
                ):
                    await asyncio.sleep(0.01)
            recorded = time.time() - started
            results.append(
                {"delivered": delivered, "recorded": recorded, "first": stats["first"] - started}
            )
        return results


def run(stack: IsolatedStack) -> list[dict[str, Any]]:
    with SinkProcess() as sink, tempfile.TemporaryDirectory() as logs:
        dispatcher = ServiceProcess(stack, "dispatcher", log_dir=Path(logs))
        try:
            results = asyncio.run(_rounds(stack, sink))
        finally:
            dispatcher.stop()
    delivered = [r["delivered"] for r in results]
    recorded = [r["recorded"] for r in results]
    first = [r["first"] for r in results]
    return [
        row("1 event → 1,000 subscriptions, all delivered",
            round(statistics.median(delivered) * 1000), "ms",
            f"median of {ROUNDS}; best {min(delivered) * 1000:,.0f} ms, "
            f"worst {max(delivered) * 1000:,.0f} ms; one sink (per-target bound 64)"),
        row("… and all 1,000 attempt rows written", round(statistics.median(recorded) * 1000),
            "ms", f"median of {ROUNDS}"),
        row("… first delivery", round(statistics.median(first) * 1000, 1), "ms",
            "received_at → first arrival at the sink"),
        row("fan-out delivery rate", round(SUBSCRIBERS / statistics.median(delivered)),
            "deliveries/s", "1,000 / median time"),
    ]  # fmt: skip
