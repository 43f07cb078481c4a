"""End to end on a replicated 3-broker cluster beside the single broker, in the same run.

Two Kafkas, one PostgreSQL, one Redis, one sink:

- **single**: the shared local broker (``make stack-up``), topics with 1 replica.
- **cluster**: a private 3-node KRaft cluster (``deploy/local/stack.sh`` with
  ``HOOKSTREAM_KAFKA_BROKERS=3`` in a temporary directory, its own ports), topics with 3
  replicas and ``min.insync.replicas=2``: every acks=all write waits for a second copy.

On each, the same two loads: signed ``POST /ingest/{id}`` from wrk at 64 connections for
5 s through one ingest and one dispatcher process (``bench.delivery``'s wrk load:
throughput, and a p99 that includes the backlog), with the CPU each process and the
brokers spent per delivery; then 5,000 events paced at 1,000/s onto the events topic
(``bench.delivery.end_to_end``: latency without a backlog). The cluster also gives the
log bytes a delivery writes (one replica).

Last, for the capacity model (docs/operations.md): how many attempt rows/s PostgreSQL
takes the way dispatchers write them (COPY, a few hundred rows per batch, one connection
per dispatcher), with the server's CPU per row.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.delivery import (
    PACE,
    PACED_N,
    _clear_attempts,
    _ingest_load_wrk,
    _process_cpu,
    _wait_http,
    body,
    end_to_end,
)
from services.dispatcher.attempts import attempt_row
from shared.models import ATTEMPT_COLUMNS, AttemptStatus
from shared.records import DeliveryJob, EventRecord
from tests.support.private_stack import PrivateStack, link_main_kafka_libs
from tests.support.procs import ServiceProcess, free_port
from tests.support.stack import IsolatedStack, dev_broker_pid
from tests.support.targets import SinkProcess

SECTION = "cluster"
BROKERS = 3
ROWS = 60_000
ROWS_PER_COPY = 250
WRITERS = 2


def row(metric: str, value: float | int, unit: str, note: str = "") -> dict[str, Any]:
    return {"section": SECTION, "metric": metric, "value": value, "unit": unit, "note": note}


@contextmanager
def kafka_cluster() -> Iterator[PrivateStack]:
    """Only the brokers of a private stack: PostgreSQL and Redis stay the shared ones."""
    local_dir = Path(tempfile.mkdtemp(prefix="hookstream-bench-cluster-"))
    cluster = PrivateStack(local_dir, brokers=BROKERS)
    try:
        link_main_kafka_libs(local_dir)
        cluster.start("kafka")
        yield cluster
    finally:
        try:
            cluster.down()
        finally:
            shutil.rmtree(local_dir, ignore_errors=True)


def broker_pids(cluster: PrivateStack | None) -> list[int]:
    if cluster is None:
        return [dev_broker_pid()]
    return [pid for n in range(1, BROKERS + 1) if (pid := cluster.node_pid(n)) is not None]


def log_bytes(cluster: PrivateStack, prefix: str) -> int:
    """Bytes of record batches in node 1's logs of this namespace's topics (one replica)."""
    data = cluster.local_dir / "kafka-cluster" / "node-1" / "data"
    return sum(f.stat().st_size for f in data.glob(f"{prefix}.*/*.log"))


def wrk_run(
    stack: IsolatedStack, sink: SinkProcess, cluster: PrivateStack | None
) -> dict[str, float]:
    """wrk through one ingest and one dispatcher; rates, latency and CPU per delivery."""
    asyncio.run(_clear_attempts(stack))
    sink.reset()
    port = free_port()
    with tempfile.TemporaryDirectory() as logs:
        dispatcher = ServiceProcess(stack, "dispatcher", log_dir=Path(logs))
        ingest = ServiceProcess(stack, "ingest", log_dir=Path(logs), HOOKSTREAM_HTTP_PORT=str(port))
        try:
            assert _wait_http(f"http://127.0.0.1:{port}/health", ingest), ingest.log()[-1500:]
            time.sleep(2)  # the dispatcher joins its group
            pids = {
                "ingest": [ingest.proc.pid],
                "dispatcher": [dispatcher.proc.pid],
                "brokers": broker_pids(cluster),
            }
            before = {k: sum(_process_cpu(p) for p in v) for k, v in pids.items()}
            rate, front, latency = asyncio.run(_ingest_load_wrk(stack, sink, port))
            spent = {k: sum(_process_cpu(p) for p in v) - before[k] for k, v in pids.items()}
        finally:
            ingest.stop()
            dispatcher.stop()
    n = sink.stats()["unique"]
    found = {"rate": rate, "front": front, "n": n, **latency}
    found.update({f"{k}_cpu_us": v / n * 1e6 for k, v in spent.items()})
    return found


def measure(
    stack: IsolatedStack, sink: SinkProcess, cluster: PrivateStack | None
) -> dict[str, float]:
    prefix = stack.env["HOOKSTREAM_TOPIC_PREFIX"]
    before = log_bytes(cluster, prefix) if cluster is not None else 0
    found = wrk_run(stack, sink, cluster)
    if cluster is not None:
        # Only this run's records: the warm-up's are in the same logs.
        found["log_bytes"] = (log_bytes(cluster, prefix) - before) / found["n"]
    paced = end_to_end(stack, sink, PACED_N, via_ingest=False, pace=PACE)
    assert paced is not None
    found["paced_p50"] = paced[2]["p50"]
    found["paced_p99"] = paced[2]["p99"]
    return found


def _attempt_rows(n: int) -> list[tuple[Any, ...]]:
    event = EventRecord(
        uuid.uuid4(), "order.created", datetime.now(UTC), "application/json", body(0)
    )
    now = datetime.now(UTC)
    return [
        attempt_row(DeliveryJob.for_event(event, uuid.uuid4()), target_url="https://example.com/hook",
                    status=AttemptStatus.SUCCESS, status_code=200, error=None, duration_ms=12,
                    excerpt="ok", now=now)
        for _ in range(n)
    ]  # fmt: skip


async def _copy_rows(stack: IsolatedStack) -> tuple[float, float, float]:
    """(rows/s, server CPU µs per row, WAL bytes per row): WRITERS connections COPY
    ROWS_PER_COPY rows at a time."""
    dsn = stack.database_url.replace("+asyncpg", "")
    rows = _attempt_rows(ROWS)
    conns = [await asyncpg.connect(dsn) for _ in range(WRITERS)]
    try:
        pids = [await c.fetchval("SELECT pg_backend_pid()") for c in conns]
        cpu_before = sum(_process_cpu(p) for p in pids)
        wal_before = await conns[0].fetchval("SELECT pg_current_wal_lsn()")

        async def writer(conn: asyncpg.Connection, part: list[tuple[Any, ...]]) -> None:
            for i in range(0, len(part), ROWS_PER_COPY):
                await conn.copy_records_to_table(
                    "delivery_attempts",
                    records=part[i : i + ROWS_PER_COPY],
                    columns=ATTEMPT_COLUMNS,
                )

        started = time.monotonic()
        await asyncio.gather(*(writer(c, rows[i::WRITERS]) for i, c in enumerate(conns)))
        took = time.monotonic() - started
        cpu = sum(_process_cpu(p) for p in pids) - cpu_before
        wal: int = await conns[0].fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", wal_before
        )
        return ROWS / took, cpu / ROWS * 1e6, wal / ROWS
    finally:
        for conn in conns:
            await conn.close()


def run(stack: IsolatedStack) -> list[dict[str, Any]]:
    assert shutil.which("wrk"), "bench cluster needs wrk (make bench-tools)"
    with SinkProcess() as sink, kafka_cluster() as cluster:
        replicated = IsolatedStack()
        replicated.env["HOOKSTREAM_KAFKA_BOOTSTRAP"] = cluster.kafka_bootstrap
        replicated.up()
        try:
            # The cluster's JVMs were started a moment ago: until the JIT has compiled
            # their hot paths they spend most of their CPU compiling (a first run here
            # measured 1,545 µs of broker CPU per delivery against the warm single
            # broker's 30). One discarded run warms them up.
            wrk_run(replicated, sink, cluster)
            single = measure(stack, sink, None)
            three = measure(replicated, sink, cluster)
        finally:
            replicated.down()
    rows_per_s, row_cpu, row_wal = asyncio.run(_copy_rows(stack))
    body_bytes = len(body(0))
    ratio = three["rate"] / single["rate"]
    cores = os.cpu_count()
    return [
        row("end to end, 1 broker RF 1", round(single["rate"]), "deliveries/s",
            f"wrk → ingest → fan-out → delivery, 5 s; ingest accepted {single['front']:,.0f}/s"),
        row("end to end, 3 brokers RF 3", round(three["rate"]), "deliveries/s",
            f"same load; ingest accepted {three['front']:,.0f}/s; min.insync.replicas 2"),
        row("3 brokers RF 3 / 1 broker RF 1", round(100 * ratio, 1), "%",
            f"throughput, same run, the {cores} cores shared by every broker and service"),
        row("p99 received→delivered under wrk, 1 broker", round(single["p99"], 1), "ms",
            f"p50 {single['p50']:,.1f} ms; includes the backlog of a saturated run"),
        row("p99 received→delivered under wrk, 3 brokers", round(three["p99"], 1), "ms",
            f"p50 {three['p50']:,.1f} ms; ratio {three['p99'] / single['p99']:.2f}"),
        row(f"p99 received→delivered at {PACE:,}/s, 1 broker", round(single["paced_p99"], 1),
            "ms", f"p50 {single['paced_p50']:,.1f} ms; {PACED_N:,} events paced, no backlog"),
        row(f"p99 received→delivered at {PACE:,}/s, 3 brokers", round(three["paced_p99"], 1),
            "ms", f"p50 {three['paced_p50']:,.1f} ms; ratio "
            f"{three['paced_p99'] / single['paced_p99']:.2f}"),
        row("ingest CPU per request, 1 broker", round(single["ingest_cpu_us"]), "µs",
            "the ingest process's user+system CPU over the wrk run: signature, publish, 202"),
        row("ingest CPU per request, 3 brokers", round(three["ingest_cpu_us"]), "µs",
            "same, acks=all waiting for a second copy"),
        row("dispatcher CPU per delivery, 1 broker", round(single["dispatcher_cpu_us"]), "µs",
            "fan-out + delivery + attempt rows + commits, one process"),
        row("dispatcher CPU per delivery, 3 brokers", round(three["dispatcher_cpu_us"]), "µs",
            "same"),
        row("broker CPU per delivery, 1 broker", round(single["brokers_cpu_us"]), "µs",
            "the shared JVM's CPU over the wrk run and drain (other users' load counts too)"),
        row("broker CPU per delivery, 3 brokers", round(three["brokers_cpu_us"]), "µs",
            "all three JVMs together: leaders, followers' fetches, the quorum"),
        row("Kafka log bytes per delivery, one replica", round(three["log_bytes"]), "B",
            f"events + deliveries records of a {body_bytes}-byte body with headers, "
            f"retry tiers empty; times RF on disk"),
        row("PostgreSQL attempt rows", round(rows_per_s), "rows/s",
            f"{ROWS:,} rows by COPY, {ROWS_PER_COPY} a batch, {WRITERS} connections; the local "
            "cluster runs with fsync off (production's WAL flushes cost more)"),
        row("PostgreSQL CPU per attempt row", round(row_cpu, 1), "µs",
            "the two server backends' user+system CPU during the COPYs"),
        row("PostgreSQL WAL per attempt row", round(row_wal), "B",
            "pg_current_wal_lsn() before and after: what a replica or archive receives"),
    ]  # fmt: skip
