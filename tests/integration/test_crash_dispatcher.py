"""Crash safety: SIGKILL a dispatcher mid-stream; restart; nothing accepted is lost.

Real processes throughout: the dispatcher(s) via ``python -m services.dispatcher``, the
target as a separate sink process that counts every arrival per ``webhook-id``.
Duplicates are expected after a crash (at-least-once) and are printed; losses are not.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from shared.records import DeliveryJob, EventRecord, delivery_id_for
from tests.support.dispatch import DispatchWorld
from tests.support.metrics import sample, wait_cache_loaded
from tests.support.procs import ServiceProcess, free_port
from tests.support.stack import IsolatedStack
from tests.support.targets import SinkProcess, TargetServer

pytestmark = pytest.mark.slow

TARGETED = 3000
FANOUT_EVENTS = 10
SUBSCRIPTIONS = 24


def start_dispatcher(
    stack: IsolatedStack, log_dir: Path, metrics_port: int | None = None, **env: str
) -> ServiceProcess:
    if metrics_port:
        env["HOOKSTREAM_METRICS_PORT"] = str(metrics_port)
    return ServiceProcess(stack, "dispatcher", log_dir=log_dir, **env)


async def load(
    world: DispatchWorld, sink: SinkProcess, metrics_ports: Sequence[int]
) -> set[uuid.UUID]:
    """Subscriptions and events as ingest would leave them; returns every delivery id
    that must reach the sink."""
    event_type = f"crash.{uuid.uuid4().hex[:8]}"
    subs = [
        await world.add_subscription(sink.url(f"/s/{i}"), secret=f"secret-{i}", event_types=[])
        for i in range(SUBSCRIPTIONS)
    ]
    # Fan-out matches against each dispatcher's snapshot: wait until it holds them all.
    changed = time.time()
    for port in metrics_ports:
        await wait_cache_loaded(port, changed)
    events: list[EventRecord] = [
        world.event(event_type, b'{"n": %d}' % n, subscription_id=subs[n % len(subs)])
        for n in range(TARGETED)
    ]
    events += [world.event(event_type, b'{"fan": %d}' % n) for n in range(FANOUT_EVENTS)]
    await world.produce_events(events)
    expected = {
        delivery_id_for(e.event_id, e.subscription_id)
        for e in events[:TARGETED]
        if e.subscription_id
    }
    expected |= {delivery_id_for(e.event_id, s) for e in events[TARGETED:] for s in subs}
    return expected


async def wait_for_sink(sink: SinkProcess, unique: int, timeout: float) -> dict[str, object]:
    async with asyncio.timeout(timeout):
        while (stats := sink.stats())["unique"] < unique:
            await asyncio.sleep(0.05)
    return stats


async def assert_complete(
    world: DispatchWorld, sink: SinkProcess, expected: set[uuid.UUID]
) -> None:
    await wait_for_sink(sink, len(expected), timeout=40)
    arrivals = sink.arrivals()
    seen = {uuid.UUID(k) for k in arrivals}
    assert seen == expected, f"missing {len(expected - seen)}, unexpected {len(seen - expected)}"
    duplicates = sum(len(v) - 1 for v in arrivals.values())
    # Every delivery the target saw has its SUCCESS row: no attempt row lost.
    ids = list(expected)
    async with asyncio.timeout(20):
        while (
            rows := await world.scalar(
                "SELECT count(DISTINCT delivery_id) FROM delivery_attempts "
                "WHERE status = 'SUCCESS' AND delivery_id = ANY(:ids)",
                ids=ids,
            )
        ) < len(expected):
            await asyncio.sleep(0.2)
    extra_rows = await world.scalar(
        "SELECT count(*) - count(DISTINCT delivery_id) FROM delivery_attempts "
        "WHERE delivery_id = ANY(:ids)",
        ids=ids,
    )
    assert rows == len(expected)
    print(
        f"\n[crash] {len(expected)} webhooks, {len(seen)} delivered, "
        f"{duplicates} duplicate requests, {rows} with a SUCCESS row, "
        f"{extra_rows} duplicate attempt rows"
    )


def success_count(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        return sample(r.read().decode(), "hookstream_deliveries_total", outcome="SUCCESS")


def assigned(proc: ServiceProcess) -> list[TopicPartition]:
    """The partitions a dispatcher was last assigned, from its log."""
    lines = [line for line in proc.log().splitlines() if '"partitions assigned"' in line]
    if not lines:
        return []
    names = json.loads(lines[-1])["partitions"]
    return [TopicPartition(n.rsplit(":", 1)[0], int(n.rsplit(":", 1)[1])) for n in names]


def assigned_partitions(proc: ServiceProcess) -> int:
    return sum(tp.topic.endswith(".deliveries") for tp in assigned(proc))


async def test_sigkill_mid_stream_then_restart_delivers_everything(
    module_stack: IsolatedStack, world: DispatchWorld, tmp_path: Path
) -> None:
    with SinkProcess(delay_ms=10) as sink:
        port = free_port()
        first = start_dispatcher(module_stack, tmp_path, port)
        expected = await load(world, sink, [port])
        try:
            at_kill = await wait_for_sink(sink, len(expected) // 3, timeout=30)
            first.signal(signal.SIGKILL)
            first.proc.wait(10)
            first.stop()
            print(f"\n[crash] SIGKILL after {at_kill['unique']} of {len(expected)} delivered")
            second = start_dispatcher(module_stack, tmp_path)
            try:
                await assert_complete(world, sink, expected)
            finally:
                assert second.stop() == 0, second.log()[-3000:]
        finally:
            first.stop()


async def test_two_dispatchers_share_the_work_and_one_finishes_when_the_other_dies(
    module_stack: IsolatedStack, world: DispatchWorld, tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    # 8 concurrent requests per process to a sink that takes 20 ms: the work lasts a few
    # seconds, so the victim surely dies with unfinished partitions.
    with SinkProcess(delay_ms=20) as sink:
        procs = [
            start_dispatcher(module_stack, tmp_path, port, HOOKSTREAM_MAX_IN_FLIGHT_PER_TARGET="8")
            for port in ports
        ]
        try:
            # Both members hold half the partitions before any work arrives.
            async with asyncio.timeout(30):
                while [assigned_partitions(p) for p in procs] != [2, 2]:
                    await asyncio.sleep(0.2)
            expected = await load(world, sink, ports)
            async with asyncio.timeout(30):
                while min(success_count(p) for p in ports) == 0 or (
                    sink.stats()["unique"] < len(expected) // 3
                ):
                    await asyncio.sleep(0.05)
            shares = [success_count(p) for p in ports]
            victim = assigned(procs[0])
            procs[0].signal(signal.SIGKILL)
            procs[0].proc.wait(10)
            started = time.monotonic()
            print(f"\n[two] deliveries per process before the kill: {shares}")
            # The victim left work behind: its partitions' commit points are short of
            # their ends, so whatever completes them is the survivor's doing.
            committed = await world.committed()
            ends = await world.end_offsets(victim)
            left = sum(ends[tp] - committed.get(tp, 0) for tp in victim)
            print(f"[two] records left uncommitted on the victim's partitions: {left}")
            assert left > 0
            await assert_complete(world, sink, expected)
            print(f"[two] survivor finished {time.monotonic() - started:.1f}s after the kill")
            assert assigned_partitions(procs[1]) == 4
        finally:
            codes = [p.stop() for p in procs]
        assert codes[1] == 0, procs[1].log()[-3000:]


async def test_sigterm_finishes_requests_in_flight_commits_and_nothing_is_redelivered(
    module_stack: IsolatedStack, world: DispatchWorld, tmp_path: Path
) -> None:
    async with TargetServer() as target:
        target.reply("/slow", delay=2.0)
        sub = await world.add_subscription(target.url("/slow"))
        jobs = [DeliveryJob.for_event(world.event("slow.one", b"{}"), sub) for _ in range(20)]
        sent = [await world.produce_job(job) for job in jobs]
        proc = start_dispatcher(module_stack, tmp_path)
        try:
            await target.wait_for(20, "/slow")  # all twenty requests are in flight
            stopping = time.monotonic()
            proc.signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                while proc.alive():
                    await asyncio.sleep(0.05)
            took = time.monotonic() - stopping
        finally:
            code = proc.stop()
        assert code == 0, proc.log()[-3000:]
        assert took < 2.0 + 3.0, took  # waited for the answers, not for a timeout
        ids = [j.delivery_id for j in jobs]
        rows = await world.attempts("delivery_id = ANY(:ids)", ids=ids)
        assert sorted(r["delivery_id"] for r in rows) == sorted(ids)
        assert {r["status"] for r in rows} == {"SUCCESS"}
        assert '"in_flight": 20' in proc.log()

        # Everything was committed: the group's position is past every job, so a new
        # dispatcher finds nothing to redo.
        committed = await world.committed()
        for meta in sent:
            assert committed.get(TopicPartition(meta.topic, meta.partition), -1) > meta.offset
        assert len(target.received("/slow")) == 20
