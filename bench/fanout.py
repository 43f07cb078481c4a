"""Fan-out: one event to 1,000 subscriptions, time until all 1,000 are delivered.

A real dispatcher process, 1,000 subscriptions on one local sink process (so the
per-target bound, 64, applies to all of them: a worst case for fan-out, since real
subscribers are on many hosts). The event is produced to the events topic exactly as
``POST /events`` would; the clock starts at its ``received_at``.

The same run then does it again for 1,000 other subscriptions that each carry a payload
filter of five conditions the event matches (issue 15: ≥ 70 % of the rate without), so
every one of them is evaluated against the body.
"""

from __future__ import annotations

import asyncio
import json
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
PLAIN, FILTERED = "bench.fan", "bench.fan-filtered"
# Five conditions, all met by BODY: a range, a set, an equality, a path into a list that
# must exist and an exclusion; what endpoint owners write.
FILTER: dict[str, Any] = {
    "data.amount": {"$gte": 100},
    "data.currency": {"$in": ["EUR", "USD", "GBP"]},
    "data.customer.tier": "gold",
    "data.items.0.sku": {"$exists": True},
    "data.region": {"$ne": "apac"},
}
BODY = (
    b'{"type": "order.paid", "data": {"amount": 250, "currency": "EUR", "region": "eu", '
    b'"customer": {"id": "c_1", "tier": "gold"}, "items": [{"sku": "A-1", "qty": 2}], '
    b'"round": %d}}'
)


def row(metric: str, value: float | int, unit: str, note: str = "") -> dict[str, Any]:
    return {"section": SECTION, "metric": metric, "value": value, "unit": unit, "note": note}


async def _one(
    world: DispatchWorld, sink: SinkProcess, event_type: str, n: int
) -> dict[str, float]:
    sink.reset()
    event = world.event(event_type, BODY % n)
    await world.produce_event(event)
    started = event.received_at.timestamp()
    async with asyncio.timeout(60):
        while (stats := sink.stats())["unique"] < SUBSCRIBERS:
            await asyncio.sleep(0.01)
    delivered = stats["last"] - started
    async with asyncio.timeout(60):
        while (
            await world.scalar(
                "SELECT count(*) FROM delivery_attempts WHERE event_id = :e AND status = 'SUCCESS'",
                e=event.event_id,
            )
            < SUBSCRIBERS
        ):
            await asyncio.sleep(0.01)
    recorded = time.time() - started
    return {"delivered": delivered, "recorded": recorded, "first": stats["first"] - started}


async def _rounds(stack: IsolatedStack, sink: SinkProcess) -> dict[str, list[dict[str, float]]]:
    """ROUNDS to 1,000 plain subscriptions (the section's first rows, as ever), then
    ROUNDS pairs alternating plain and filtered, for the comparison: the same warmth and
    the same noise for both sides."""
    async with DispatchWorld(stack.settings()) as world:
        await world.add_subscriptions(sink.url("/fan"), SUBSCRIBERS, event_types=[PLAIN])
        await world.add_subscriptions(
            sink.url("/fan"), SUBSCRIBERS, event_types=[FILTERED], body_filter=FILTER
        )
        await asyncio.sleep(6)  # past the cache TTL: the dispatcher's snapshot has them all
        runs: dict[str, list[dict[str, float]]] = {"first": [], PLAIN: [], FILTERED: []}
        for n in range(ROUNDS):
            runs["first"].append(await _one(world, sink, PLAIN, n))
        for n in range(ROUNDS):
            for event_type in (PLAIN, FILTERED):
                runs[event_type].append(await _one(world, sink, event_type, n))
        return runs


def run(stack: IsolatedStack) -> list[dict[str, Any]]:
    with SinkProcess() as sink, tempfile.TemporaryDirectory() as logs:
        dispatcher = ServiceProcess(stack, "dispatcher", log_dir=Path(logs))
        try:
            runs = asyncio.run(_rounds(stack, sink))
        finally:
            dispatcher.stop()
    results, plain, filtered = runs["first"], runs[PLAIN], runs[FILTERED]
    plain_rate = SUBSCRIBERS / statistics.median(r["delivered"] for r in plain)
    filtered_rate = SUBSCRIBERS / statistics.median(r["delivered"] for r in filtered)
    ratio = 100 * filtered_rate / plain_rate
    met = "(met)" if ratio >= 70 else "(NOT met)"
    return [
        *_rows(results),
        row("fan-out delivery rate, each subscription with a 5-condition filter",
            round(filtered_rate), "deliveries/s",
            f"1,000 / median time of {ROUNDS}; 1,000 other subscriptions, each filter "
            f"{json.dumps(FILTER)} met by the body"),
        row("filtered / unfiltered fan-out", round(ratio, 1), "%",
            f"{ROUNDS} rounds of each, alternating, same dispatcher (unfiltered in those "
            f"rounds: {plain_rate:,.0f} deliveries/s); target ≥ 70 % {met}"),
    ]  # fmt: skip


def _rows(results: list[dict[str, float]]) -> list[dict[str, Any]]:
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
