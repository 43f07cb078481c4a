"""Latency at light load (issue 19): from the 202 to the first arrival at the target.

One ingest and one dispatcher process, one sink, ``SUBSCRIPTIONS`` signed subscriptions.
The client paces signed ``POST /ingest/{id}`` open loop: one loop starts each request
when it is due and never waits for earlier answers (a client holding the whole run as
pending tasks stalls itself and inflates the tail). Client and sink share the two cores
with what they measure, so both are bare asyncio protocols (bench.pacer, the sink's
``bare`` form): with aiohttp on both sides they took ~250 µs of CPU per webhook, a third
of a core at the soak's rate, and the machine ran at 93 % busy.

Runs, in this order, in one section:

- capacity: end to end through ingest as fast as it goes (``bench.delivery.end_to_end``,
  its own processes), so "half" and "a third" are of this run's machine;
- ``PACE`` (70/s) for ``PACED_S`` seconds, and half of the capacity for ``HALF_S``;
- the soak: a third of the capacity for ``SOAK_S`` (600 s), with the processes' RSS at
  its start and end and every webhook accounted for.

Latency is the sink's first arrival of a delivery minus the moment the client read its
202. The breakdown follows one webhook through the timestamps Hookstream has:
``received_at`` (ingest, on the record) → the event record's CreateTime (ingest's send)
→ the job record's CreateTime (fan-out's send) → the request's start (the attempt row's
``created_at`` minus its duration) → the sink's arrival; plus the two fetch waits the
dispatcher measures itself (``hookstream_record_wait_seconds``: CreateTime → read, for
events and for jobs), from its histogram.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import json
import os
import re
import statistics
import tempfile
import time
import urllib.request
import uuid
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy.engine import make_url

from bench.cpuwait import Sampler, pids_named, waits_between
from bench.delivery import body, end_to_end
from bench.pacer import Pacer
from bench.targets import rss_mb
from tests.support.dispatch import DispatchWorld
from tests.support.procs import ServiceProcess, free_port
from tests.support.stack import (
    DEV_KAFKA_DIR,
    DEV_PG_DIR,
    IsolatedStack,
    dev_broker_pid,
    postmaster_pid,
)
from tests.support.targets import SinkProcess

SECTION = "latency"
SUBSCRIPTIONS = 10
PACE = 70.0
PACED_S = float(os.environ.get("BENCH_LATENCY_S", "30"))
HALF_S = float(os.environ.get("BENCH_LATENCY_HALF_S", "20"))
SOAK_S = float(os.environ.get("BENCH_SOAK_S", "600"))
CAPACITY_N = 10_000
WAIT_METRIC = "hookstream_record_wait_seconds"


def row(metric: str, value: float | int, unit: str, note: str = "") -> dict[str, Any]:
    return {"section": SECTION, "metric": metric, "value": value, "unit": unit, "note": note}


@dataclass(slots=True)
class Sent:
    delivery_id: str
    accepted: float  # the client read the 202


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# --- the histogram the dispatcher keeps ---------------------------------------------------


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def _buckets(page: str, stage: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) of one stage's wait histogram."""
    out = []
    prefix = f'{WAIT_METRIC}_bucket{{le="'
    for line in page.splitlines():
        if line.startswith(prefix) and f'stage="{stage}"' in line:
            le = line[len(prefix) :].split('"', 1)[0]
            out.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    return sorted(out)


def hist_quantile(before: str, after: str, stage: str, q: float) -> float:
    """The q-quantile (ms) of what was observed between two scrapes, interpolated within
    its bucket as Prometheus's histogram_quantile does."""
    was = dict(_buckets(before, stage))
    now = [(le, count - was.get(le, 0.0)) for le, count in _buckets(after, stage)]
    total = now[-1][1] if now else 0.0
    if not total:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for le, count in now:
        if count >= rank:
            if le == float("inf"):
                return lower * 1000
            inside = count - below
            return (lower + (le - lower) * ((rank - below) / inside if inside else 1)) * 1000
        lower, below = le, count
    return lower * 1000


# --- the load ---------------------------------------------------------------------------


class Client:
    """Signed targeted webhooks, paced open loop (bench.pacer: one prepared byte string per
    request on keep-alive connections, answers parsed just far enough).

    The client must not stall itself: a pause in its loop sends the overdue requests in
    one burst, and the burst, not Hookstream, makes the tail. So during a run it keeps
    nothing that the garbage collector has to scan again and again: the answers go into
    flat arrays (a float and a string per webhook), and what existed before the run is
    frozen out of the collector's sight. Measured: holding the whole run as ``Sent``
    objects and done tasks made full collections of this process stop it for ~250 ms
    every few seconds at 1,500/s.
    """

    def __init__(self, port: int, subs: list[uuid.UUID], secrets: list[str]) -> None:
        self._port = port
        self._heads = [
            (
                f"POST /ingest/{sub} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
                "content-type: application/json\r\nx-webhook-event: order.created\r\n"
            ).encode()
            for sub in subs
        ]
        self._secrets = [s.encode() for s in secrets]
        self._n = 0

    def _request(self) -> bytes:
        i = self._n
        self._n += 1
        k = i % len(self._heads)
        payload = body(i)
        signature = hmac.new(self._secrets[k], payload, hashlib.sha256).hexdigest()
        return b"%sx-hub-signature-256: sha256=%s\r\ncontent-length: %d\r\n\r\n%s" % (
            self._heads[k], signature.encode(), len(payload), payload,
        )  # fmt: skip

    async def paced(self, rate: float, seconds: float) -> list[Sent]:
        n = max(1, int(rate * seconds))
        ids = [""] * n
        accepted = array("d", bytes(8 * n))
        failures: list[str] = []
        outstanding = n
        done = asyncio.Event()

        def answer(slot: int, status: int | None, content: bytes) -> None:
            nonlocal outstanding
            accepted[slot] = time.time()
            if status == 202:
                ids[slot] = json.loads(content)["delivery_id"]
            else:
                failures.append(f"{status} {content[:300]!r}")
            outstanding -= 1
            if not outstanding:
                done.set()

        pacer = Pacer(self._port, answer)
        gc.collect()
        gc.freeze()
        try:
            start = time.monotonic() + 0.2
            for i in range(n):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                pacer.send(i, self._request())
            await pacer.drain()
            await done.wait()
        finally:
            pacer.close()
            gc.unfreeze()
        if failures:
            raise RuntimeError(f"{len(failures)} webhooks refused, e.g. {failures[0]}")
        return [Sent(ids[i], accepted[i]) for i in range(n)]


async def _wait_arrived(sink: SinkProcess, ids: set[str], timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        arrivals = sink.arrivals()
        if ids <= arrivals.keys() or time.monotonic() > deadline:
            return {d: min(arrivals[d]) for d in ids if d in arrivals}
        await asyncio.sleep(0.2)


async def _topic_times(
    world: DispatchWorld, topic: str, key: Callable[[dict[str, bytes]], str]
) -> dict[str, float]:
    """CreateTime (s) of every record of ``topic``, by ``key(headers)``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=world.settings.kafka_bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or ())]
        if not tps:
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(tps)
        times: dict[str, float] = {}

        async def behind() -> bool:
            return any([await consumer.position(tp) < end for tp, end in ends.items()])

        while await behind():
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for r in records:
                    times[key(dict(r.headers))] = r.timestamp / 1000
        return times
    finally:
        await consumer.stop()


async def breakdown(
    world: DispatchWorld, sent: list[Sent], arrived: dict[str, float]
) -> dict[str, list[float]]:
    ids = [s.delivery_id for s in sent if s.delivery_id in arrived]
    rows = await world.attempts(
        "delivery_id = ANY(:ids) AND attempt_number = 1", ids=[uuid.UUID(i) for i in ids]
    )
    attempt = {str(r["delivery_id"]): r for r in rows}
    events = await _topic_times(world, world.topics.events, lambda h: h["event_id"].decode())
    jobs = await _topic_times(world, world.topics.deliveries, lambda h: h["delivery_id"].decode())
    accepted = {s.delivery_id: s.accepted for s in sent}
    seg: dict[str, list[float]] = {
        "received → event sent (ingest)": [],
        "received → 202 read by the client (ingest, publish ack)": [],
        "event sent → job sent (broker, fetch, fan-out)": [],
        "job sent → request started (broker, fetch, delivery stage)": [],
        "request started → arrival (HTTP)": [],
    }
    for d in ids:
        r = attempt.get(d)
        if r is None or d not in jobs:
            continue
        received = r["first_received_at"].timestamp()
        event_sent = events.get(str(r["event_id"]))
        started = r["created_at"].timestamp() - (r["duration_ms"] or 0) / 1000
        if event_sent is None:
            continue
        seg["received → event sent (ingest)"].append(event_sent - received)
        seg["received → 202 read by the client (ingest, publish ack)"].append(
            accepted[d] - received
        )
        seg["event sent → job sent (broker, fetch, fan-out)"].append(jobs[d] - event_sent)
        seg["job sent → request started (broker, fetch, delivery stage)"].append(started - jobs[d])
        seg["request started → arrival (HTTP)"].append(arrived[d] - started)
    return {k: [v * 1000 for v in vs] for k, vs in seg.items()}


# --- the section ----------------------------------------------------------------------------


def capacity(stack: IsolatedStack, sink: SinkProcess) -> float:
    result = end_to_end(stack, sink, CAPACITY_N, via_ingest=True)
    assert result is not None, "ingest did not start"
    return result[0]


async def _run(
    stack: IsolatedStack, sink: SinkProcess, cap: float, logs: Path
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    port, metrics = free_port(), free_port()
    ingest = ServiceProcess(stack, "ingest", log_dir=logs, HOOKSTREAM_HTTP_PORT=str(port))
    dispatcher = ServiceProcess(
        stack, "dispatcher", log_dir=logs, HOOKSTREAM_METRICS_PORT=str(metrics)
    )
    try:
        async with DispatchWorld(stack.settings()) as world:
            secrets = [f"lat-secret-{i}" for i in range(SUBSCRIPTIONS)]
            subs = [
                await world.add_subscription(sink.url(f"/lat/{i}"), secret=s)
                for i, s in enumerate(secrets)
            ]
            await _wait_http(port, ingest)
            client = Client(port, subs, secrets)
            warm = await client.paced(50, 2)  # connections, caches, the group
            await _wait_arrived(sink, {s.delivery_id for s in warm}, 60)
            for name, rate, seconds in (
                ("at 70/s", PACE, PACED_S),
                ("at half capacity", cap / 2, HALF_S),
            ):
                before = _scrape(metrics)
                sent = await client.paced(rate, seconds)
                arrived = await _wait_arrived(sink, {s.delivery_id for s in sent}, 120)
                after = _scrape(metrics)
                lat = [
                    (arrived[s.delivery_id] - s.accepted) * 1000
                    for s in sent
                    if s.delivery_id in arrived
                ]
                lost = len(sent) - len(lat)
                rows += [
                    row(f"202→first arrival p50, {name}", round(pct(lat, 50), 2), "ms",
                        f"{len(sent):,} webhooks at {rate:,.0f}/s open loop ({SUBSCRIPTIONS} "
                        f"subscriptions, one sink); not arrived: {lost}"),
                    row(f"202→first arrival p99, {name}", round(pct(lat, 99), 2), "ms",
                        f"max {max(lat):.1f} ms"),
                ]  # fmt: skip
                parts = await breakdown(world, sent, arrived)
                for label, values in parts.items():
                    rows.append(
                        row(
                            f"{name}: {label}",
                            round(pct(values, 50), 2),
                            "ms p50",
                            f"p99 {pct(values, 99):.2f} ms, {len(values):,} webhooks",
                        )
                    )
                for stage, label in (
                    ("fanout", "event sent → read by fan-out"),
                    ("delivery", "job sent → read by the delivery stage"),
                ):
                    rows.append(
                        row(
                            f"{name}: {label} (dispatcher histogram)",
                            round(hist_quantile(before, after, stage, 0.5), 2),
                            "ms p50",
                            f"p99 {hist_quantile(before, after, stage, 0.99):.2f} ms",
                        )
                    )
            if SOAK_S > 0:
                rows += await _soak(world, client, sink, cap / 3, [ingest, dispatcher])
    finally:
        dispatcher.stop()
        ingest.stop()
    return rows


async def _soak(
    world: DispatchWorld,
    client: Client,
    sink: SinkProcess,
    rate: float,
    procs: list[ServiceProcess],
) -> list[dict[str, Any]]:
    def rss() -> list[float]:
        return [rss_mb(p.proc.pid) for p in procs]

    start = rss()
    sampler = Sampler(SOAK_S + 400, cpu_groups(procs, sink))
    await asyncio.sleep(1.0)  # its interpreter starts before the first webhook does
    began = time.time()
    sent = await client.paced(rate, SOAK_S)
    ended = time.time()
    arrived = await _wait_arrived(sink, {s.delivery_id for s in sent}, 300)
    end = rss()
    sampler.stop()
    samples = await asyncio.to_thread(sampler.result)
    pauses = slow_collections(procs, began, time.time())
    broker = broker_pauses(began, time.time())
    longest = sorted(broker, key=lambda b: -b[1])[:3]
    lat = [(arrived[s.delivery_id] - s.accepted) * 1000 for s in sent if s.delivery_id in arrived]
    lost = len(sent) - len(lat)
    growth = max(100 * (e - s) / s for s, e in zip(start, end, strict=True))
    # Where the worst pauses fall: the arrival times of the slowest ten, to match with logs.
    slowest = sorted(
        (s for s in sent if s.delivery_id in arrived),
        key=lambda s: arrived[s.delivery_id] - s.accepted,
    )[-10:]
    worst = [((arrived[s.delivery_id] - s.accepted) * 1000, s.accepted) for s in slowest]
    # Which stage held them (the same breakdown as the paced runs, for these ten only).
    stages = await breakdown(world, slowest, arrived)
    t0 = began
    # The worst webhooks' lifetimes (from a little before their 202 to their arrival):
    # which processes waited for a CPU meanwhile, and how busy the machine was.
    waits: dict[str, float] = {}
    used: dict[str, float] = {}
    busiest = 0.0
    for ms, accepted in worst:
        w, u, busy = waits_between(samples, accepted - 0.1, accepted + ms / 1000)
        busiest = max(busiest, busy)
        for name, waited in w.items():
            waits[name] = max(waits.get(name, 0.0), waited)
        for name, ran in u.items():
            used[name] = max(used.get(name, 0.0), ran)
    mean_busy = statistics.fmean(sm[1] for sm in samples) if samples else 0.0
    _, whole, _ = waits_between(samples, began, ended)
    database = make_url(world.settings.database_url).database or ""
    maintenance = autovacuum_runs(database, began, time.time())
    during_worst = [
        m
        for m in maintenance
        if any(m.start <= a + ms / 1000 and m.end >= a - 0.1 for ms, a in worst)
    ]
    return [
        row("soak p50", round(pct(lat, 50), 2), "ms",
            f"{len(sent):,} webhooks over {SOAK_S:.0f} s at {rate:,.0f}/s (a third of "
            f"capacity); not arrived: {lost}"),
        row("soak p99", round(pct(lat, 99), 2), "ms", "target ≤ 25 ms"),
        row("soak p99.9", round(pct(lat, 99.9), 2), "ms"),
        row("soak max", round(max(lat), 1), "ms",
            f"target ≤ 100 ms; the soak began at {datetime.fromtimestamp(t0, UTC):%H:%M:%S} "
            "UTC; the ten worst at s " + ", ".join(f"{a - t0:.0f}" for _, a in worst)),
        row("soak: the ten worst, by stage", round(max(ms for ms, _ in worst), 1), "ms",
            "the most any of them spent in each stage: "
            + "; ".join(f"{label} {max(values):.1f} ms"
                        for label, values in stages.items() if values)),
        row("soak: garbage collections over 50 ms", len(pauses), "",
            "; ".join(f"{name} gen {gen} {ms:.0f} ms at s {at:.0f}" for name, at, gen, ms in pauses)
            or "none (hookstream_gc_pause_seconds)"),
        row("soak: longest broker GC pause", max((ms for _, ms in broker), default=0), "ms",
            f"{len(broker)} pauses (the dev broker's gc.log); the longest at s "
            + ", ".join(f"{at:.0f} ({ms:.0f} ms)" for at, ms in longest)
            if broker else "no gc.log found (broker started before GC logging)"),
        row("soak: CPU busy, mean / during the worst", round(100 * mean_busy), "%",
            f"{100 * busiest:.0f} % during the ten worst; run-queue wait then (ms over "
            "one webhook's life, the most for any of the ten; summed over each process's "
            "threads): "
            + (", ".join(f"{n} {ms:.0f}" for n, ms in sorted(waits.items(), key=lambda w: -w[1]))
               or "not sampled")),
        row("soak: CPU used per webhook", round(1000 * sum(whole.values()) / len(sent)), "µs",
            "over the whole soak, by process: "
            + (", ".join(f"{n} {1000 * ms / len(sent):.0f}"
                         for n, ms in sorted(whole.items(), key=lambda u: -u[1]))
               or "not sampled")),
        row("soak: CPU used around the worst", round(sum(used.values())), "ms",
            "over one webhook's life, the most for any of the ten (softirq: network "
            "processing no process was charged for; steal: the hypervisor ran another "
            "guest; other: the rest of the machine's busy time): "
            + (", ".join(f"{n} {ms:.0f}" for n, ms in sorted(used.items(), key=lambda u: -u[1]))
               or "not sampled")),
        row("soak: PostgreSQL autovacuum and autoanalyze", len(maintenance), "runs",
            f"{sum(m.cpu_s for m in maintenance):.1f} s of CPU in all (the dev cluster's "
            f"log); running during the ten worst: "
            + ("; ".join(f"{m.what} {m.table} s {m.start - t0:.1f} to {m.end - t0:.1f} "
                         f"({m.cpu_s:.2f} s CPU)" for m in during_worst) or "none")
            + "; longest: "
            + ("; ".join(f"{m.what} {m.table} at s {m.start - t0:.0f} "
                         f"{m.end - m.start:.1f} s ({m.cpu_s:.2f} s CPU)"
                         for m in sorted(maintenance, key=lambda m: -m.cpu_s)[:3])
               or "none")),
        row("soak RSS growth", round(growth, 1), "%",
            f"ingest {start[0]:.0f}→{end[0]:.0f} MB, dispatcher {start[1]:.0f}→{end[1]:.0f} "
            "MB; target ≤ 10 %"),
    ]  # fmt: skip


@dataclass(slots=True)
class Maintenance:
    what: str  # "vacuum" or "analyze"
    table: str
    start: float
    end: float
    cpu_s: float


_AUTO = re.compile(r'LOG:  automatic (vacuum|analyze) of table "([^".]+)\.[^".]+\.([^"]+)"')
_USAGE = re.compile(r"CPU: user: ([\d.]+) s, system: ([\d.]+) s, elapsed: ([\d.]+) s")


def autovacuum_runs(database: str, since: float, until: float) -> list[Maintenance]:
    """Every autovacuum and autoanalyze of ``database`` that ran between the two times,
    from the dev PostgreSQL's log (deploy/local/stack.sh logs each with its timing: the
    line is written when it ends, its ``system usage`` says how long it ran)."""
    log = DEV_PG_DIR / "postgres.log"
    if not log.exists():
        return []
    found: list[Maintenance] = []
    current: tuple[str, str, float] | None = None
    for line in log.read_text(errors="replace").splitlines():
        match = _AUTO.search(line)
        if match:
            current = None
            if match[2] == database:
                at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
                current = (match[1], match[3], at.replace(tzinfo=UTC).timestamp())
            continue
        usage = _USAGE.search(line) if current else None
        if usage and current:
            what, table, end = current
            start = end - float(usage[3])
            if start <= until and end >= since:
                found.append(
                    Maintenance(what, table, start, end, float(usage[1]) + float(usage[2]))
                )
            current = None
    return found


def slow_collections(
    procs: list[ServiceProcess], since: float, until: float
) -> list[tuple[str, float, int, float]]:
    """(service, seconds after ``since``, generation, ms) of every slow garbage
    collection the processes logged (shared/gcpauses.py) between the two times."""
    found = []
    for proc in procs:
        for line in proc.log().splitlines():
            if '"slow garbage collection"' not in line:
                continue
            entry = json.loads(line)
            at = datetime.fromisoformat(entry["timestamp"]).timestamp()
            if since <= at <= until:
                found.append((entry["service"], at - since, entry["generation"], entry["took_ms"]))
    return sorted(found, key=lambda f: f[1])


def broker_pauses(since: float, until: float) -> list[tuple[float, float]]:
    """(seconds after ``since``, ms) of every stop-the-world pause in the dev broker's GC
    log (deploy/local/stack.sh writes it) between the two times."""
    found = []
    for log in sorted(DEV_KAFKA_DIR.glob("gc.log*")):
        for line in log.read_text(errors="replace").splitlines():
            # [2026-12-04T08:35:03.486+0000] GC(123) Pause Young (Normal) (...) 18.191ms
            if " Pause " not in line or not line.endswith("ms"):
                continue
            at = datetime.strptime(line[1:29], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
            if since <= at <= until:
                found.append((at - since, float(line.rsplit(" ", 1)[1][:-2])))
    return found


def cpu_groups(procs: list[ServiceProcess], sink: SinkProcess) -> dict[str, list[int] | str]:
    """Every process on the path of a webhook, and the client (this process)."""
    return {
        "ingest": [procs[0].proc.pid],
        "dispatcher": [procs[1].proc.pid],
        "broker": [dev_broker_pid()],
        # The postmaster and its children, listed at every sample: autovacuum workers
        # start mid-run.
        "postgres": f"^{postmaster_pid()}",
        "redis": pids_named("redis-server"),
        "sink": [sink.proc.pid],
        "client": [os.getpid()],
    }


async def _wait_http(port: int, proc: ServiceProcess) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return
        except OSError:
            await asyncio.sleep(0.2)
    raise RuntimeError(f"ingest did not start:\n{proc.log()[-2000:]}")


def run(stack: IsolatedStack) -> list[dict[str, Any]]:
    # The bare sink: the same recording at a fraction of aiohttp's CPU per request, which
    # on two cores would otherwise be taken from what is measured.
    with SinkProcess(bare=True) as sink:
        cap = capacity(stack, sink)
        sink.reset()
        with tempfile.TemporaryDirectory() as logs:
            rows = uvloop.run(_run(stack, sink, cap, Path(logs)))
    capacity_row = row(
        "end-to-end capacity",
        round(cap),
        "deliveries/s",
        "through ingest, as fast as it goes (bench.delivery.end_to_end)",
    )
    return [capacity_row, *rows]
