"""Isolation: healthy targets' delivery rate with and without a troubled neighbour.

Three drains of the delivery stage in the same run, each with the same number of jobs for
healthy subscriptions (the sink process). In the second, 10% of the subscriptions point
at a black hole (a loopback server that accepts connections and never answers) and get
their share of jobs on top. In the third, those 10% instead point at a second sink with a
rate limit of 5 deliveries/s each, far below their share, so most of their jobs wait their
turn (issue 15). In the fourth, those 10% are ordered subscriptions (issue 16) at the
black hole: each one's head hangs for a delivery timeout and is retried in place while the
rest of its jobs wait in PostgreSQL. Healthy rate = healthy jobs / time from the sink's
first to its last healthy request. Targets: with the black hole (issue 5), with the
rate-limited neighbours (issue 15) and with the stuck ordered ones (issue 16), each ≥ 80%
of without.

Also one ordered subscription alone at the sink: its deliveries/s, one at a time.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from bench.delivery import body, drain_rate
from shared.kafka import make_consumer
from shared.records import DeliveryJob, EventRecord
from shared.topics import Topics
from tests.support.dispatch import DispatchWorld
from tests.support.stack import IsolatedStack
from tests.support.targets import BlackHole, SinkProcess

SECTION = "isolation"
N_HEALTHY = int(os.environ.get("BENCH_ISOLATION_N", "20000"))
SUBSCRIPTIONS = 50
DEAD_SHARE = 0.10
RATE_LIMIT = 5
N_ORDERED = int(os.environ.get("BENCH_ORDERED_N", "2000"))


def row(metric: str, value: float | int, unit: str, note: str = "") -> dict[str, Any]:
    return {"section": SECTION, "metric": metric, "value": value, "unit": unit, "note": note}


class BackgroundBlackHole:
    """A ``BlackHole`` served by its own event loop in a thread, for the run's length."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.hole = BlackHole()

    def __enter__(self) -> BlackHole:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.hole.__aenter__(), self._loop).result(10)
        return self.hole

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.hole.__aexit__(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


async def _preload(
    stack: IsolatedStack,
    sink: SinkProcess,
    n_healthy: int,
    dead_url: str | None,
    rate_limit: int | None = None,
    ordered: bool = False,
) -> int:
    """Jobs spread evenly over the subscriptions; returns how many went to the dead one."""
    n_dead_subs = round(SUBSCRIPTIONS * DEAD_SHARE) if dead_url else 0
    n_healthy_subs = SUBSCRIPTIONS - n_dead_subs
    async with DispatchWorld(stack.settings()) as world:
        healthy = [
            await world.add_subscription(sink.url(f"/iso/{i}"), secret=f"whsec-{i}")
            for i in range(n_healthy_subs)
        ]
        dead = [
            await world.add_subscription(
                f"{dead_url}/{i}", secret=f"whsec-d{i}", rate_limit=rate_limit, ordered=ordered
            )
            for i in range(n_dead_subs)
        ]
        per_sub = n_healthy / n_healthy_subs
        n_dead = round(per_sub * n_dead_subs)
        # Interleaved, as real traffic would be: dead jobs among the healthy ones.
        subs = [healthy[i % n_healthy_subs] for i in range(n_healthy)]
        for i in range(n_dead):
            subs.insert(round(i * len(subs) / max(n_dead, 1)), dead[i % n_dead_subs])
        await _produce(world, subs)
    return n_dead


async def _produce(world: DispatchWorld, subs: list[uuid.UUID]) -> None:
    """One job per entry of ``subs``, in that order, 2,000 at a time."""
    now = datetime.now(UTC)
    for start in range(0, len(subs), 2000):
        acks = []
        for i, sub in enumerate(subs[start : start + 2000], start):
            event = EventRecord(uuid.uuid4(), "order.created", now, "application/json", body(i))
            job = DeliveryJob.for_event(event, sub)
            acks.append(
                await world.producer.send(
                    world.topics.deliveries, job.body, key=job.key, headers=job.headers()
                )
            )
        await asyncio.gather(*acks)


async def _skip_leftovers(stack: IsolatedStack) -> None:
    """Commit the dispatcher group past every job left over (hung at the black hole,
    waiting for its rate-limited start): the next drain starts clean instead of
    replaying them."""
    settings = stack.settings()
    topics = Topics.from_settings(settings)
    consumer = make_consumer(settings, group_id=topics.dispatcher_group)
    await consumer.start()
    try:
        tps = [TopicPartition(topics.deliveries, p) for p in range(settings.deliveries_partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.commit(dict(ends.items()))
    finally:
        await consumer.stop()


def _drain(
    stack: IsolatedStack,
    sink: SinkProcess,
    dead_url: str | None,
    rate_limit: int | None = None,
    ordered: bool = False,
) -> tuple[float, int]:
    """(healthy deliveries/s, jobs for the other subscriptions)."""
    n_dead = asyncio.run(_preload(stack, sink, N_HEALTHY, dead_url, rate_limit, ordered))
    sink.reset()
    with tempfile.TemporaryDirectory() as logs:
        rate = drain_rate(stack, sink, N_HEALTHY, Path(logs), "healthy jobs")
    asyncio.run(_skip_leftovers(stack))
    return rate, n_dead


async def _preload_ordered(stack: IsolatedStack, sink: SinkProcess, n: int) -> None:
    async with DispatchWorld(stack.settings()) as world:
        sub = await world.add_subscription(sink.url("/ordered"), secret=f"whsec-o{n}", ordered=True)
        await _produce(world, [sub] * n)


def _ordered_alone(stack: IsolatedStack, sink: SinkProcess) -> float:
    """Deliveries/s of one ordered subscription draining a backlog at the sink."""
    asyncio.run(_preload_ordered(stack, sink, N_ORDERED))
    sink.reset()
    with tempfile.TemporaryDirectory() as logs:
        return drain_rate(stack, sink, N_ORDERED, Path(logs), "ordered jobs")


def run(stack: IsolatedStack) -> list[dict[str, Any]]:
    with SinkProcess() as sink, BackgroundBlackHole() as hole, SinkProcess() as limited:
        clean, _ = _drain(stack, sink, None)
        # Before the black hole: its hung jobs are never committed, so the drain after it
        # replays them (they hang again, holding their target's 64 slots).
        limited.reset()
        paced, n_limited = _drain(stack, sink, limited.url("/limited"), RATE_LIMIT)
        limited_stats = limited.stats()
        dirty, n_dead = _drain(stack, sink, hole.url("/dead"))
        connections = hole.connections
        stuck, n_ordered = _drain(stack, sink, hole.url("/ordered"), ordered=True)
        ordered_rate = _ordered_alone(stack, sink)
        # The first drain runs on a cold stack; the baseline is the faster of two, one
        # before and one after the others, so a ratio is never flattered by warm-up.
        clean_after, _ = _drain(stack, sink, None)
    clean_first, clean = clean, max(clean, clean_after)
    ratio = 100 * dirty / clean
    paced_ratio = 100 * paced / clean
    stuck_ratio = 100 * stuck / clean
    n_limited_subs = round(SUBSCRIPTIONS * DEAD_SHARE)
    return [
        row("healthy deliveries, no dead target", round(clean), "deliveries/s",
            f"{N_HEALTHY:,} jobs over {SUBSCRIPTIONS} subscriptions (sink); the faster of a "
            f"drain first ({clean_first:,.0f}/s) and one last ({clean_after:,.0f}/s)"),
        row("healthy deliveries, 10% at a black hole", round(dirty), "deliveries/s",
            f"same {N_HEALTHY:,} healthy jobs, plus {n_dead:,} for "
            f"{round(SUBSCRIPTIONS * DEAD_SHARE)} subscriptions on a target that accepts and "
            f"never answers ({connections} connections to it)"),
        row("with black hole / without", round(ratio, 1), "%",
            "target ≥ 80% " + ("(met)" if ratio >= 80 else "(NOT met)")),
        row("healthy deliveries, 10% rate-limited", round(paced), "deliveries/s",
            f"same {N_HEALTHY:,} healthy jobs, plus {n_limited:,} for {n_limited_subs} "
            f"subscriptions limited to {RATE_LIMIT}/s each (a second sink; "
            f"{limited_stats['requests']:,} of theirs delivered while the healthy ones ran)"),
        row("with rate-limited neighbours / without", round(paced_ratio, 1), "%",
            "target ≥ 80% " + ("(met)" if paced_ratio >= 80 else "(NOT met)")),
        row("healthy deliveries, 10% ordered with a stuck head", round(stuck), "deliveries/s",
            f"same {N_HEALTHY:,} healthy jobs, plus {n_ordered:,} for "
            f"{round(SUBSCRIPTIONS * DEAD_SHARE)} ordered subscriptions at the black hole: "
            "each head hangs and is retried in place, the rest of their jobs stored to wait"),
        row("with stuck ordered neighbours / without", round(stuck_ratio, 1), "%",
            "target ≥ 80% " + ("(met)" if stuck_ratio >= 80 else "(NOT met)")),
        row("one ordered subscription, instant sink", round(ordered_rate, 1), "deliveries/s",
            f"{N_ORDERED:,} jobs to one subscription with ordered: true, delivered one at a "
            "time (a round trip to the sink and one PostgreSQL transaction each)"),
    ]  # fmt: skip
