"""Backfill: how fast a backfill reads the events log, and what it costs live delivery.

History first: ``N_HISTORY`` events in the events topic (1 in ``MATCH_EVERY`` of a type the
backfilled subscription takes), produced before any dispatcher runs; the dispatcher group
is then committed past them, so they are history, not live traffic. Then three drains of
``N_LIVE`` live delivery jobs (50 subscriptions on one sink process), as in the isolation
section: one clean, one while a janitor process backfills the whole history into another
subscription (its jobs go to a second sink, through the same dispatcher), one clean again.
Live rate = live jobs / time from the sink's first to its last request; the baseline is
the faster clean drain. Scan rate = events read / time the backfill ran (its own log
line). Targets (issue 16): scan ≥ 20,000 events/s, live with the backfill ≥ 80 % of clean.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from sqlalchemy import text

from bench.delivery import drain_rate
from bench.isolation import _produce
from shared.kafka import make_consumer
from shared.records import EventRecord
from shared.topics import Topics
from tests.support.dispatch import DispatchWorld
from tests.support.procs import ServiceProcess
from tests.support.stack import IsolatedStack
from tests.support.targets import SinkProcess

SECTION = "backfill"
N_HISTORY = int(os.environ.get("BENCH_BACKFILL_HISTORY", "400000"))
N_LIVE = int(os.environ.get("BENCH_BACKFILL_LIVE", "20000"))
MATCH_EVERY = 100
SUBSCRIPTIONS = 50
HISTORY_TYPE, MATCHED_TYPE = "bench.history", "bench.history.wanted"


def row(metric: str, value: float | int, unit: str, note: str = "") -> dict[str, Any]:
    return {"section": SECTION, "metric": metric, "value": value, "unit": unit, "note": note}


async def _history(stack: IsolatedStack) -> datetime:
    """The history, and the dispatcher group committed past it; returns when it began."""
    began = datetime.now(UTC)
    async with DispatchWorld(stack.settings()) as world:
        for start in range(0, N_HISTORY, 5000):
            acks = []
            for i in range(start, min(start + 5000, N_HISTORY)):
                kind = MATCHED_TYPE if i % MATCH_EVERY == 0 else HISTORY_TYPE
                event = EventRecord(
                    uuid.uuid4(),
                    kind,
                    datetime.now(UTC),
                    "application/json",
                    b'{"n": %d, "type": "order.paid", "data": {"amount": 250}}' % i,
                )
                acks.append(
                    await world.producer.send(
                        world.topics.events, event.body, key=event.key, headers=event.headers()
                    )
                )
            await asyncio.gather(*acks)
    settings = stack.settings()
    topics = Topics.from_settings(settings)
    consumer = make_consumer(settings, group_id=topics.dispatcher_group)
    await consumer.start()
    try:
        tps = [TopicPartition(topics.events, p) for p in range(settings.events_partitions)]
        consumer.assign(tps)
        await consumer.commit(dict((await consumer.end_offsets(tps)).items()))
    finally:
        await consumer.stop()
    return began


async def _live(stack: IsolatedStack, sink: SinkProcess) -> None:
    async with DispatchWorld(stack.settings()) as world:
        subs = [
            await world.add_subscription(sink.url(f"/live/{i}"), secret=f"whsec-{i}")
            for i in range(SUBSCRIPTIONS)
        ]
        await _produce(world, [subs[i % SUBSCRIPTIONS] for i in range(N_LIVE)])


async def _request_backfill(stack: IsolatedStack, url: str, since: datetime) -> uuid.UUID:
    """A subscription created after the history, and its backfill row as ingest writes it."""
    async with DispatchWorld(stack.settings()) as world:
        sub = await world.add_subscription(url, event_types=[MATCHED_TYPE])
        backfill = uuid.uuid4()
        async with world.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO backfills (id, subscription_id, application_id, since, until)"
                    " SELECT :id, id, application_id, :since, now() FROM subscriptions"
                    " WHERE id = :sub"
                ),
                {"id": backfill, "sub": sub, "since": since - timedelta(seconds=1)},
            )
    return backfill


async def _backfill_state(stack: IsolatedStack, backfill: uuid.UUID) -> dict[str, Any]:
    async with DispatchWorld(stack.settings()) as world, world.engine.connect() as conn:
        found = await conn.execute(text("SELECT * FROM backfills WHERE id = :id"), {"id": backfill})
        return dict(found.one()._mapping)


def _drain(stack: IsolatedStack, sink: SinkProcess, logs: Path) -> float:
    """Live deliveries/s of N_LIVE preloaded jobs."""
    asyncio.run(_live(stack, sink))
    sink.reset()
    return drain_rate(stack, sink, N_LIVE, logs, "live jobs")


def _finished_line(log: str) -> dict[str, Any]:
    for line in log.splitlines():
        if '"backfill finished"' in line:
            found: dict[str, Any] = json.loads(line)
            return found
    raise RuntimeError(f"the backfill did not finish:\n{log[-3000:]}")


def run(stack: IsolatedStack) -> list[dict[str, Any]]:
    began = asyncio.run(_history(stack))
    with (
        SinkProcess() as sink,
        SinkProcess() as backfilled,
        tempfile.TemporaryDirectory() as tmp,
    ):
        logs = Path(tmp)
        clean = _drain(stack, sink, logs)
        janitor = ServiceProcess(stack, "janitor", log_dir=logs)
        try:
            backfill = asyncio.run(_request_backfill(stack, backfilled.url("/backfill"), began))
            # The backfill is under way before the live drain starts.
            deadline = time.monotonic() + 60
            while asyncio.run(_backfill_state(stack, backfill))["scanned"] == 0:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"backfill did not start:\n{janitor.log()[-3000:]}")
                time.sleep(0.05)
            during = _drain(stack, sink, logs)
            overlapped = asyncio.run(_backfill_state(stack, backfill))["status"] == "running"
            deadline = time.monotonic() + 300
            while (state := asyncio.run(_backfill_state(stack, backfill)))["status"] == "running":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"backfill did not end:\n{janitor.log()[-3000:]}")
                time.sleep(0.2)
        finally:
            janitor.stop()
        finished = _finished_line(janitor.log())
        if state["status"] != "done":
            raise RuntimeError(f"backfill {state['status']}: {state['error']}")
        clean_after = _drain(stack, sink, logs)
    baseline = max(clean, clean_after)
    ratio = 100 * during / baseline
    scan_rate = finished["events_per_second"]
    scan_met = "(met)" if scan_rate >= 20_000 else "(NOT met)"
    live_met = "(met)" if ratio >= 80 and overlapped else "(NOT met)"
    return [
        row("backfill scan rate", scan_rate, "events/s",
            f"{state['scanned']:,} events read in {finished['seconds']:.1f} s by the janitor, "
            f"{state['matched']:,} matched, {state['published']:,} published (1 in "
            f"{MATCH_EVERY}); target ≥ 20,000 {scan_met}"),
        row("live delivery during a backfill", round(during), "deliveries/s",
            f"{N_LIVE:,} live jobs on {SUBSCRIPTIONS} subscriptions at the sink, while the "
            f"backfill ran (still running when the drain ended: {overlapped})"),
        row("live delivery with / without a backfill", round(ratio, 1), "%",
            f"clean drains {clean:,.0f} and {clean_after:,.0f} deliveries/s (baseline the "
            f"faster); target ≥ 80 % {live_met}"),
    ]  # fmt: skip
