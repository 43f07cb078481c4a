"""Delivery throughput: the dispatcher against a fast local sink, beside a raw aiohttp loop.

Sections (all in one run, because this 2-core machine is noisy):

1. ``raw``: a bare aiohttp loop in this process posting the same bodies to the same sink
   at the same concurrency (64: the dispatcher's per-target bound, one sink = one
   target). The client-side ceiling. Measured before and after the pipeline.
1b. ``simple``: the obvious single-process loop (consume → sign → POST 64 at a time →
   COPY rows → commit, batch after batch) over the same pre-loaded jobs: the design
   baseline, measured in the same run.
2. ``stage``: the delivery stage alone. ``N_STAGE`` jobs are pre-loaded on the deliveries
   topic, then a real dispatcher process drains them: signing, POST, attempt rows
   (COPY) and offset commits included. Timed from the first arrival at the sink to the
   moment every attempt row is in PostgreSQL and every offset is committed.
3. ``e2e``: ``N_E2E`` webhooks through ingest's real ``POST /ingest/{id}`` (a real ingest
   process; signed requests from this process at 64 concurrent), fanned out and
   delivered by a real dispatcher process. Timed from the first request to the last
   arrival at the sink; latency is sink arrival minus ingest's ``received_at``.

The sink is a separate process (``tests.support.targets``), so it never shares an event
loop with the client it measures. Set ``BENCH_PROFILE=1`` to also run the stage under
pyinstrument (a separate, slower run; the report goes to bench/results/).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import text

from bench.child import own_cpu
from bench.ingest import WRK
from services.dispatcher.attempts import attempt_row
from shared import secretbox
from shared.db import asyncpg_dsn
from shared.models import ATTEMPT_COLUMNS, AttemptStatus
from shared.records import DeliveryJob, EventRecord, delivery_id_for
from shared.signing import hub_signature, standard_webhooks_key, standard_webhooks_signature
from shared.topics import Topics
from tests.support.dispatch import DispatchWorld
from tests.support.procs import ServiceProcess, free_port
from tests.support.stack import ROOT, IsolatedStack
from tests.support.targets import SinkProcess

SECTION = "delivery"
N_STAGE = int(os.environ.get("BENCH_DELIVERY_N", "20000"))
N_E2E = int(os.environ.get("BENCH_E2E_N", "10000"))
CONCURRENCY = 64
PACE = 1000
PACED_N = 5000
SUBSCRIPTIONS = 50
RESULTS = Path(__file__).parent / "results"


def body(n: int) -> bytes:
    """~400 bytes of JSON, different per webhook."""
    return (
        b'{"id": "evt_%08d", "type": "order.created", "data": {"order": %d, '
        b'"customer": "cus_0000000000000000", "amount": 4200, "currency": "eur", '
        b'"items": [{"sku": "sku_1", "qty": 1}, {"sku": "sku_2", "qty": 3}], '
        b'"note": "%s"}}' % (n, n, b"x" * 180)
    )


def row(metric: str, value: float | int, unit: str, note: str = "") -> dict[str, Any]:
    return {"section": SECTION, "metric": metric, "value": value, "unit": unit, "note": note}


# --- 1. the raw loop --------------------------------------------------------------------


async def _raw_loop(url: str, n: int, concurrency: int) -> float:
    headers = {
        "content-type": "application/json",
        "user-agent": "Hookstream/bench",
        "webhook-id": str(uuid.uuid4()),
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": "v1," + "A" * 44,
        "x-webhook-id": str(uuid.uuid4()),
        "x-webhook-event": "order.created",
        "x-hub-signature-256": "sha256=" + "0" * 64,
    }
    bodies = [body(i) for i in range(n)]
    todo = iter(bodies)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for b in todo:
                async with session.post(url, data=b, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - started)


def raw_loop(sink: SinkProcess, n: int) -> tuple[float, float]:
    """(requests/s, CPU µs per request in this process)."""
    before = own_cpu()
    rate = uvloop.run(_raw_loop(sink.url("/raw"), n, CONCURRENCY))
    return rate, (own_cpu() - before) / n * 1e6


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of another process (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- 1b. the simple loop: the same work, one batch at a time ---------------------------


async def _simple_loop(stack: IsolatedStack, n: int) -> float:
    """consume → sign → POST (64 at a time) → COPY rows → commit, batch after batch: the
    obvious 60-line design, on the same topic under its own group. Returns records/s."""
    settings = stack.settings()
    topics = Topics.from_settings(settings)
    conn = await asyncpg.connect(asyncpg_dsn(settings))
    subs = {
        # Read without the ORM, so opened here (stored sealed: shared/secretbox.py).
        r["id"]: (r["target_url"], r["secret_key"] and secretbox.reveal(r["secret_key"]))
        for r in await conn.fetch("SELECT id, target_url, secret_key FROM subscriptions")
    }
    consumer = AIOKafkaConsumer(
        topics.deliveries,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.topic_prefix}.simple-loop",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
    )
    await consumer.start()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY))
    slots = asyncio.Semaphore(CONCURRENCY)

    async def deliver(job: DeliveryJob) -> tuple[Any, ...]:
        url, secret = subs[job.subscription_id]
        ts = int(time.time())
        headers = {
            "content-type": job.content_type,
            "webhook-id": str(job.delivery_id),
            "webhook-timestamp": str(ts),
            "webhook-signature": standard_webhooks_signature(
                standard_webhooks_key(secret), str(job.delivery_id), ts, job.body
            ),
            "x-hub-signature-256": hub_signature(secret, job.body),
        }
        async with slots:
            started = time.perf_counter()
            async with session.post(url, data=job.body, headers=headers) as resp:
                excerpt = (await resp.content.read(1024)).decode(errors="replace")
            ms = int((time.perf_counter() - started) * 1000)
        return attempt_row(job, target_url=url, status=AttemptStatus.SUCCESS,
                           status_code=resp.status, error=None, duration_ms=ms,
                           excerpt=excerpt, now=datetime.now(UTC))  # fmt: skip

    done, started = 0, 0.0
    try:
        while done < n:
            for tp, records in (await consumer.getmany(timeout_ms=100)).items():
                started = started or time.time()
                jobs = [DeliveryJob.decode(r.value, r.headers) for r in records]
                rows = await asyncio.gather(*(deliver(j) for j in jobs))
                await conn.copy_records_to_table(
                    "delivery_attempts", records=rows, columns=ATTEMPT_COLUMNS
                )
                await consumer.commit({tp: records[-1].offset + 1})
                done += len(records)
        return n / (time.time() - started)
    finally:
        await session.close()
        await consumer.stop()
        await conn.close()


def simple_loop(stack: IsolatedStack, n: int) -> tuple[float, float]:
    """(records/s, CPU µs per record), over the jobs the stage bench left on the topic."""
    asyncio.run(_clear_attempts(stack))
    before = own_cpu()
    rate = uvloop.run(_simple_loop(stack, n))
    return rate, (own_cpu() - before) / n * 1e6


# --- 2. the delivery stage alone --------------------------------------------------------


async def _preload(stack: IsolatedStack, sink: SinkProcess, n: int) -> None:
    async with DispatchWorld(stack.settings()) as world:
        subs = [
            await world.add_subscription(sink.url(f"/stage/{i}"), secret=f"whsec-{i}")
            for i in range(SUBSCRIPTIONS)
        ]
        now = datetime.now(UTC)
        for start in range(0, n, 2000):
            acks = []
            for i in range(start, min(start + 2000, n)):
                event = EventRecord(uuid.uuid4(), "order.created", now, "application/json", body(i))
                job = DeliveryJob.for_event(event, subs[i % SUBSCRIPTIONS])
                acks.append(
                    await world.producer.send(
                        world.topics.deliveries, job.body, key=job.key, headers=job.headers()
                    )
                )
            await asyncio.gather(*acks)


async def _end_offsets(world: DispatchWorld, topic: str) -> int:
    parts = await world.partitions(topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=world.settings.kafka_bootstrap)
    await consumer.start()
    try:
        return sum((await consumer.end_offsets(parts)).values())
    finally:
        await consumer.stop()


async def _all_done(stack: IsolatedStack, n: int, sink: SinkProcess, timeout: float) -> float:
    """When every row is written and every offset committed (time.time())."""
    async with DispatchWorld(stack.settings()) as world:
        parts = await world.partitions(world.topics.deliveries)
        end = await _end_offsets(world, world.topics.deliveries)
        async with asyncio.timeout(timeout):
            while sink.stats()["unique"] < n:
                await asyncio.sleep(0.05)
            while True:
                rows = await world.scalar(
                    "SELECT count(*) FROM delivery_attempts WHERE status = 'SUCCESS'"
                )
                committed = await world.committed()
                done = sum(committed.get(TopicPartition(tp.topic, tp.partition), 0) for tp in parts)
                if rows >= n and done >= end:
                    return time.time()
                await asyncio.sleep(0.05)


def start_dispatcher(stack: IsolatedStack, log_dir: Path, profile: Path | None) -> Any:
    if profile is None:
        return ServiceProcess(stack, "dispatcher", log_dir=log_dir)
    return subprocess.Popen(
        [
            sys.executable, "-m", "pyinstrument", "-r", "text", "-o", str(profile),
            "-m", "services.dispatcher",
        ],
        cwd=ROOT,
        env=stack.process_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def stop(proc: Any) -> None:
    if isinstance(proc, ServiceProcess):
        proc.stop()
    else:
        proc.terminate()
        proc.wait(60)


def drain_rate(stack: IsolatedStack, sink: SinkProcess, n: int, log_dir: Path, what: str) -> float:
    """Start a dispatcher, wait until the sink has ``n`` distinct deliveries (at most
    300 s), stop it; deliveries/s from the sink's first to its last request."""
    proc = start_dispatcher(stack, log_dir, None)
    try:
        deadline = time.monotonic() + 300
        while sink.stats()["unique"] < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not delivered: {sink.stats()}")
            time.sleep(0.05)
    finally:
        stop(proc)
    stats = sink.stats()
    return float(n / (stats["last"] - stats["first"]))


def delivery_stage(
    stack: IsolatedStack, sink: SinkProcess, n: int, profile: Path | None = None
) -> dict[str, float]:
    asyncio.run(_clear_attempts(stack))
    asyncio.run(_preload(stack, sink, n))
    sink.reset()
    with tempfile.TemporaryDirectory() as logs:
        proc = start_dispatcher(stack, Path(logs), profile)
        pid = proc.proc.pid if isinstance(proc, ServiceProcess) else proc.pid
        try:
            while sink.stats()["requests"] == 0:
                time.sleep(0.005)
            cpu_start = _process_cpu(pid)
            done_at = asyncio.run(_all_done(stack, n, sink, timeout=300))
            cpu = _process_cpu(pid) - cpu_start
        finally:
            stop(proc)
    stats = sink.stats()
    return {
        "rate": n / (done_at - stats["first"]),
        "sink_rate": n / (stats["last"] - stats["first"]),
        "duplicates": stats["requests"] - stats["unique"],
        "cpu_us": cpu / n * 1e6,
    }


async def _clear_attempts(stack: IsolatedStack) -> None:
    async with DispatchWorld(stack.settings()) as world, world.engine.begin() as conn:
        await conn.execute(text("TRUNCATE delivery_attempts"))


# --- 3. end to end through ingest -------------------------------------------------------


async def _ingest_load(
    stack: IsolatedStack, sink: SinkProcess, port: int, n: int
) -> tuple[float, float, dict[str, float]]:
    async with DispatchWorld(stack.settings()) as world:
        secrets = [f"e2e-secret-{i}" for i in range(SUBSCRIPTIONS)]
        subs = [
            await world.add_subscription(sink.url(f"/e2e/{i}"), secret=s)
            for i, s in enumerate(secrets)
        ]
        bodies = [body(i) for i in range(n)]
        requests = [
            (
                f"http://127.0.0.1:{port}/ingest/{subs[i % SUBSCRIPTIONS]}",
                b,
                {
                    "content-type": "application/json",
                    "x-webhook-event": "order.created",
                    "x-hub-signature-256": "sha256="
                    + hmac.new(secrets[i % SUBSCRIPTIONS].encode(), b, hashlib.sha256).hexdigest(),
                },
            )
            for i, b in enumerate(bodies)
        ]
        todo = iter(requests)
        accepted: list[str] = []
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker() -> None:
                for url, b, headers in todo:
                    async with session.post(url, data=b, headers=headers) as resp:
                        answer = await resp.json()
                        assert resp.status == 202, answer
                        accepted.append(answer["delivery_id"])

            started = time.time()
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            ingested = time.time()
        return await _collect(world, sink, n, accepted, started, ingested)


WRK_SECONDS = 5
_WRK_LUA = """
local targets = {%s}
local i = 0
wrk.method = "POST"
wrk.body = %s
wrk.headers["content-type"] = "application/json"
wrk.headers["x-webhook-event"] = "order.created"
request = function()
  i = i + 1
  local t = targets[(i %% #targets) + 1]
  wrk.headers["x-hub-signature-256"] = t[2]
  return wrk.format(nil, t[1])
end
"""


async def _ingest_load_wrk(
    stack: IsolatedStack, sink: SinkProcess, port: int
) -> tuple[float, float, dict[str, float]]:
    """wrk (C, cheap on CPU) drives ingest for WRK_SECONDS; every accepted webhook must
    reach the sink. Accepted = what ingest put on the events topic."""
    async with DispatchWorld(stack.settings()) as world:
        secrets = [f"e2e-secret-{i}" for i in range(SUBSCRIPTIONS)]
        subs = [
            await world.add_subscription(sink.url(f"/e2e/{i}"), secret=s)
            for i, s in enumerate(secrets)
        ]
        b = body(0)
        signatures = [hmac.new(s.encode(), b, hashlib.sha256).hexdigest() for s in secrets]
        targets = ", ".join(
            f'{{"/ingest/{sub}", "sha256={sig}"}}'
            for sub, sig in zip(subs, signatures, strict=True)
        )
        before = await _end_offsets(world, world.topics.events)
        with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
            script.write(_WRK_LUA % (targets, json.dumps(b.decode())))
            script.flush()
            assert WRK is not None
            started = time.time()
            subprocess.run(
                [WRK, "-t1", f"-c{CONCURRENCY}", f"-d{WRK_SECONDS}s", "-s", script.name,
                 f"http://127.0.0.1:{port}"],
                check=True, capture_output=True, timeout=WRK_SECONDS + 60,
            )  # fmt: skip
            ingested = time.time()
        n = await _end_offsets(world, world.topics.events) - before
        return await _collect(world, sink, n, None, started, ingested)


async def _produce_load(
    stack: IsolatedStack, sink: SinkProcess, n: int, pace: float | None = None
) -> tuple[float, float, dict[str, float]]:
    """The same load produced straight to the events topic (as ingest would): as fast as
    possible, or ``pace`` events/s in 50 ms steps (latency without a backlog)."""
    async with DispatchWorld(stack.settings()) as world:
        subs = [
            await world.add_subscription(sink.url(f"/e2e/{i}"), secret=f"e2e-secret-{i}")
            for i in range(SUBSCRIPTIONS)
        ]
        await asyncio.sleep(2)  # the dispatcher joins its group
        step = 500 if pace is None else max(1, int(pace / 20))
        started = time.time()
        accepted: list[str] = []
        for start in range(0, n, step):
            if pace is not None:
                await asyncio.sleep(max(0.0, started + start / pace - time.time()))
            events = [
                world.event("order.created", body(i), subscription_id=subs[i % SUBSCRIPTIONS])
                for i in range(start, min(start + step, n))
            ]
            await world.produce_events(events)
            accepted += [
                str(delivery_id_for(e.event_id, e.subscription_id))
                for e in events
                if e.subscription_id
            ]
        produced = time.time()
        return await _collect(world, sink, n, accepted, started, produced)


async def _collect(
    world: DispatchWorld,
    sink: SinkProcess,
    n: int,
    accepted: list[str] | None,
    started: float,
    ingested: float,
) -> tuple[float, float, dict[str, float]]:
    async with asyncio.timeout(300):
        while sink.stats()["unique"] < n:
            await asyncio.sleep(0.05)
    arrivals = sink.arrivals()
    last = max(min(ts) for ts in arrivals.values())
    rows = await world.attempts("status = 'SUCCESS' AND event_type = 'order.created'")
    received = {str(r["delivery_id"]): r["first_received_at"].timestamp() for r in rows}
    ids = accepted if accepted is not None else list(arrivals)
    latencies = sorted((min(arrivals[d]) - received[d]) * 1000 for d in ids if d in received)
    q = statistics.quantiles(latencies, n=100)
    return (
        n / (last - started),
        n / (ingested - started),
        {"p50": q[49], "p99": q[98], "max": latencies[-1]},
    )


def end_to_end(
    stack: IsolatedStack,
    sink: SinkProcess,
    n: int,
    *,
    via_ingest: bool,
    pace: float | None = None,
    dispatchers: int = 1,
    env: dict[str, str] | None = None,
) -> tuple[float, float, dict[str, float]] | None:
    """None when ingest cannot be started (its API is being built alongside). ``env``:
    extra environment for the services (bench/tracing.py turns tracing on with it)."""
    asyncio.run(_clear_attempts(stack))
    sink.reset()
    port = free_port()
    env = env or {}
    with tempfile.TemporaryDirectory() as logs:
        procs = [
            ServiceProcess(stack, "dispatcher", log_dir=Path(logs), **env)
            for _ in range(dispatchers)
        ]
        try:
            if via_ingest:
                ingest = ServiceProcess(
                    stack, "ingest", log_dir=Path(logs), HOOKSTREAM_HTTP_PORT=str(port), **env
                )
                procs.append(ingest)
                if not _wait_http(f"http://127.0.0.1:{port}/health", ingest):
                    print(f"[bench] ingest did not start:\n{ingest.log()[-1500:]}", file=sys.stderr)
                    return None
            if via_ingest:
                time.sleep(2)  # the dispatcher joins its group
                if WRK is not None:
                    return asyncio.run(_ingest_load_wrk(stack, sink, port))
                return asyncio.run(_ingest_load(stack, sink, port, n))
            return asyncio.run(_produce_load(stack, sink, n, pace))
        finally:
            for proc in procs:
                proc.stop()


def _wait_http(url: str, proc: ServiceProcess) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.alive():
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310
                return True
        except OSError:
            time.sleep(0.2)
    return False


# --- the section --------------------------------------------------------------------------


def run(stack: IsolatedStack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with SinkProcess() as sink:
        raw_before, raw_cpu_before = raw_loop(sink, N_STAGE)
        stage = delivery_stage(stack, sink, N_STAGE)
        simple, simple_cpu = simple_loop(stack, N_STAGE)
        raw_after, raw_cpu_after = raw_loop(sink, N_STAGE)
        raw = (raw_before + raw_after) / 2
        raw_cpu = (raw_cpu_before + raw_cpu_after) / 2
        rows += [
            row("raw aiohttp loop", round(raw), "req/s",
                f"{CONCURRENCY} concurrent, same sink and bodies; before {raw_before:,.0f}, "
                f"after {raw_after:,.0f}"),
            row("delivery stage", round(stage["rate"]), "deliveries/s",
                f"{N_STAGE:,} pre-loaded jobs, {SUBSCRIPTIONS} signed subscriptions; attempt "
                f"rows + offset commits included; sink-side {stage['sink_rate']:,.0f}/s"),
            row("delivery stage / raw loop", round(100 * stage["rate"] / raw, 1), "%",
                "client-side ceiling comparison"),
            row("simple loop (baseline)", round(simple), "deliveries/s",
                "same jobs, own group: consume → sign → POST (64 at a time) → COPY → "
                f"commit, batch by batch; CPU {simple_cpu:,.0f} µs/delivery"),
            row("delivery stage / simple loop", round(100 * stage["rate"] / simple, 1), "%",
                "ours vs the obvious design, same run"),
            row("CPU per delivery, dispatcher", round(stage["cpu_us"]), "µs",
                "whole process during the drain: consume, sign, POST, COPY, commit"),
            row("CPU per request, raw loop", round(raw_cpu), "µs",
                f"same sink; ratio {100 * raw_cpu / stage['cpu_us']:.0f}% (noise-proof view)"),
        ]  # fmt: skip
        for via_ingest in (True, False):
            result = end_to_end(stack, sink, N_E2E, via_ingest=via_ingest)
            if result is None:
                rows.append(row("end to end via ingest", 0, "deliveries/s",
                                "not measured: ingest did not start"))  # fmt: skip
                continue
            rate, front, latency = result
            how = "via ingest" if via_ingest else "events topic → sink"
            source = (
                f"signed POST /ingest/{{id}} from wrk, {CONCURRENCY} connections, "
                f"{WRK_SECONDS} s: {front * WRK_SECONDS:,.0f} accepted at {front:,.0f}/s"
                if via_ingest and WRK
                else f"{N_E2E:,} signed POST /ingest/{{id}} at {CONCURRENCY} concurrent; "
                f"ingest alone {front:,.0f}/s"
                if via_ingest
                else f"{N_E2E:,} events produced to the events topic ({front:,.0f}/s), "
                "fan-out + delivery"
            )
            rows += [
                row(f"end to end {how}", round(rate), "deliveries/s", source),
                row(f"p50 received→delivered, {how}", round(latency["p50"], 1), "ms",
                    "sink arrival - ingest received_at"),
                row(f"p99 received→delivered, {how}", round(latency["p99"], 1), "ms",
                    f"max {latency['max']:,.0f} ms"),
            ]  # fmt: skip
        paced = end_to_end(stack, sink, PACED_N, via_ingest=False, pace=PACE)
        assert paced is not None
        rows += [
            row(f"p50 received→delivered at {PACE:,}/s", round(paced[2]["p50"], 1), "ms",
                f"{PACED_N:,} events paced onto the events topic: latency without a backlog"),
            row(f"p99 received→delivered at {PACE:,}/s", round(paced[2]["p99"], 1), "ms",
                f"max {paced[2]['max']:,.0f} ms"),
        ]  # fmt: skip
        if os.environ.get("BENCH_PROFILE"):
            RESULTS.mkdir(exist_ok=True)
            profile = RESULTS / "delivery-profile.txt"
            profiled = delivery_stage(stack, sink, N_STAGE, profile=profile)
            rows.append(
                row("delivery stage under pyinstrument", round(profiled["rate"]), "deliveries/s",
                    f"profile in {profile.relative_to(ROOT)}")
            )  # fmt: skip
    return rows
