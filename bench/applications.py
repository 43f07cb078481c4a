"""Applications: what a scoped key costs on ingest, and whether fan-out in one application
depends on how many others exist.

1. ``POST /events`` with the operator key vs with an application's scoped key (``hsk_…``):
   one ingest process, the same body, the same wrk command, in back-to-back pairs whose
   order alternates. Both applications (the default one and the key's) have a
   subscription, and both records are checked on the events topic before the load.
   Target: scoped ≥ 95 % of operator (median of the pair ratios).
2. Events in application A (10 subscriptions on the sink process) produced to the events
   topic as ``POST /applications/{app}/events`` would, one every 0.25 s; time from each
   one's ``received_at`` to the last of its 10 deliveries at the sink. Measured (a) with
   A alone, then (b) after 10,000 other applications x 10 subscriptions of the same event
   type, on the same sink, were inserted with one set-based statement each: same run,
   same dispatcher. Every arrival at the sink is checked to be one of A's deliveries.
   The dispatcher's cache refreshes are watched on its metrics, to tell which events
   they delayed and how long each took.

Fan-out runs first: its dispatcher must be gone before the ingest load fills the events
topic with ~0.5 million records nobody needs delivered; its rows are deleted before the
ingest process starts.

Run alone: ``python -m bench applications``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import text

from bench.ingest import BODY, CONNECTIONS, THREADS, WARMUP_S, WRK_REPORT, cpu_seconds, wrk
from shared.models import DEFAULT_APPLICATION_ID
from shared.records import EventRecord, delivery_id_for
from shared.subscriptions import notify_changed
from shared.topics import Topics
from tests.support.broker import IngestServer, TopicProbe
from tests.support.dispatch import DispatchWorld
from tests.support.metrics import CACHE_LOADED, sample
from tests.support.procs import ServiceProcess, free_port
from tests.support.stack import IsolatedStack, admin_dsn
from tests.support.targets import SinkProcess

SECTION = "applications"
EVENT_TYPE = "invoice.payment_succeeded"
# 7 pairs of 6 s: the pair ratios on this shared box spread ±10 %, and an odd count
# gives a true median; ~85 s of load in all.
PAIRS = 7
DURATION_S = 6
SUBSCRIPTIONS = 10
OTHER_APPLICATIONS = 10_000
# 40 events 0.25 s apart: 10 s, longer than the cache's periodic refresh (a whole-table
# reload every 5 s as of this writing), which so lands among them as among real traffic.
ROUNDS = 40
ROUND_GAP_S = 0.25
# After the last event: a delivery that leaked to another application would arrive within
# this (a fan-out to 10 takes ~30 ms).
LEAK_GRACE_S = 1.0

LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
wrk.headers["x-webhook-event"] = "{event_type}"
"""

_KEY_READS = """
SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables
WHERE relname = 'api_keys'
"""
_INSERT_APPLICATION = "INSERT INTO applications (id, uid, name) VALUES (:id, :uid, :name)"
_INSERT_SUBSCRIPTION = """
INSERT INTO subscriptions (id, application_id, target_url, event_types)
VALUES (:id, :app, :url, ARRAY[:event_type])
"""
_INSERT_OTHER_APPLICATIONS = """
INSERT INTO applications (id, uid, name)
SELECT gen_random_uuid(), 'bench-other-' || g, 'Other ' || g
FROM generate_series(1, :n) AS g
"""
_INSERT_OTHER_SUBSCRIPTIONS = """
INSERT INTO subscriptions (id, application_id, target_url, event_types)
SELECT gen_random_uuid(), a.id, :url || '/' || a.uid || '/' || s, ARRAY[:event_type]
FROM applications AS a CROSS JOIN generate_series(1, :per_app) AS s
WHERE a.uid LIKE 'bench-other-%'
"""


def row(metric: str, value: float | int, unit: str, note: str = "") -> dict[str, Any]:
    return {"section": SECTION, "metric": metric, "value": value, "unit": unit, "note": note}


# --- 1. ingest: operator key vs scoped key --------------------------------------------


def _post(server: IngestServer, path: str, body: dict[str, Any]) -> Any:
    answer = httpx.post(f"{server.url}{path}", json=body, headers=server.auth, timeout=10)
    assert answer.status_code == 201, f"{path}: {answer.status_code} {answer.text}"
    return answer.json()


def _scoped_key(server: IngestServer) -> tuple[str, str]:
    """(application id, its key): an application with a subscription, like the default
    one, so both keys' events would fan out to one subscription."""
    # A loopback port nothing listens on: no dispatcher runs during the load, and none
    # of this may leave the machine if one ever did.
    target = {"target_url": "http://127.0.0.1:9/bench", "event_types": [EVENT_TYPE]}
    app = _post(server, "/applications", {"uid": "bench-ingest", "name": "Bench ingest"})
    _post(server, f"/applications/{app['id']}/subscriptions", target)
    _post(server, "/subscriptions/", target)
    key: str = _post(server, f"/applications/{app['id']}/api-keys", {"name": "bench"})["key"]
    return app["id"], key


async def _published_to(stack: IsolatedStack, server: IngestServer, key: str) -> str:
    """The application_id on the record that one ``POST /events`` with ``key`` put on the
    events topic."""
    settings = stack.settings()
    topic = Topics.from_settings(settings).events
    async with TopicProbe(settings.kafka_bootstrap, topic) as probe:
        answer = httpx.post(
            f"{server.url}/events",
            content=BODY,
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                "x-webhook-event": EVENT_TYPE,
            },
            timeout=10,
        )
        assert answer.status_code == 202, answer.text
        records = [EventRecord.decode(r.value, r.headers) for r in await probe.new_records()]
    (record,) = [r for r in records if str(r.event_id) == answer.json()["event_id"]]
    return str(record.application_id)


def _ingest(stack: IsolatedStack, workdir: Path) -> dict[str, Any]:
    server = IngestServer(stack, workdir, HOOKSTREAM_LOG_LEVEL="WARNING")
    try:
        server.wait_healthy()
        app_id, scoped = _scoped_key(server)
        keys = {"operator": server.api_key, "scoped": scoped}
        published = {name: asyncio.run(_published_to(stack, server, k)) for name, k in keys.items()}
        assert published == {"operator": str(DEFAULT_APPLICATION_ID), "scoped": app_id}
        scripts = {}
        for name, key in keys.items():
            scripts[name] = workdir / f"events-{name}.lua"
            scripts[name].write_text(
                LUA.format(body=_lua_string(BODY), key=key, event_type=EVENT_TYPE) + WRK_REPORT
            )
        url = f"{server.url}/events"
        pid = server.proc.proc.pid
        for name in keys:
            wrk(url, scripts[name], WARMUP_S)
        lookups_before = _key_lookups(stack)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in keys}
        for n in range(PAIRS):
            # Alternate who goes first: a drift (a neighbour's load, a growing log
            # segment) then weighs on both sides alike.
            for name in ("operator", "scoped") if n % 2 == 0 else ("scoped", "operator"):
                before = cpu_seconds(pid)
                result = wrk(url, scripts[name], DURATION_S)
                result["cpu_us"] = (cpu_seconds(pid) - before) / result["requests"] * 1e6
                runs[name].append(result)
                print(
                    f"[bench] applications {name} key: {result['rps']:.0f} req/s "
                    f"p50 {result['p50_us'] / 1000:.2f} ms p99 {result['p99_us'] / 1000:.2f} ms "
                    f"non2xx {result['non2xx']} cpu {result['cpu_us']:.0f} µs/req",
                    file=sys.stderr,
                )
        lookups = _key_lookups(stack) - lookups_before
        log = server.log()
    finally:
        server.stop()
    return {"runs": runs, "lookups": lookups, "tracebacks": log.count("Traceback")}


def _key_lookups(stack: IsolatedStack) -> int:
    """Reads of ``api_keys`` so far, from PostgreSQL's statistics (which a backend
    publishes within a second: hence the wait)."""

    async def read() -> int:
        conn = await asyncpg.connect(admin_dsn(stack.database_url, stack.db_name))
        try:
            found: int = await conn.fetchval(_KEY_READS)
        finally:
            await conn.close()
        return found

    time.sleep(1.2)
    return asyncio.run(read())


def _lua_string(body: bytes) -> str:
    # A JSON string literal is a valid Lua string literal for this ASCII body.
    return json.dumps(body.decode())


def _ingest_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    runs = result["runs"]
    op, sc = runs["operator"], runs["scoped"]
    ratios = sorted(s["rps"] / o["rps"] * 100 for o, s in zip(op, sc, strict=True))
    ratio = ratios[len(ratios) // 2]
    median = {name: sorted(rs, key=lambda r: r["rps"])[len(rs) // 2] for name, rs in runs.items()}
    cpu = {name: statistics.mean(r["cpu_us"] for r in rs) for name, rs in runs.items()}
    kinds = ("non2xx", "connect", "read", "write", "timeout")
    errors = {name: {k: sum(r[k] for r in rs) for k in kinds} for name, rs in runs.items()}
    scoped_s = sum(r["duration_us"] for r in sc) / 1e6
    rounds = {name: ", ".join(f"{r['rps']:.0f}" for r in rs) for name, rs in runs.items()}
    settings = (
        f"wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION_S}s, median of {PAIRS} rounds, "
        "one ingest process"
    )
    m_op, m_sc = median["operator"], median["scoped"]
    rows = [
        row("POST /events, operator key", round(m_op["rps"]), "req/s",
            f"default application (record checked on the topic); {settings}"),
        row("POST /events, scoped key", round(m_sc["rps"]), "req/s",
            f"the key's application (record checked on the topic); {settings}"),
        row("scoped key / operator key", round(ratio, 1), "%",
            f"target ≥ 95 % {'(met)' if ratio >= 95 else '(NOT met)'}; median of "
            f"back-to-back pairs, order alternating ({', '.join(f'{r:.0f}' for r in ratios)}); "
            f"rounds operator {rounds['operator']}, scoped {rounds['scoped']} req/s"),
        row("CPU per request, operator key", round(cpu["operator"]), "µs",
            "ingest process, mean of rounds"),
        row("CPU per request, scoped key", round(cpu["scoped"]), "µs",
            f"ingest process, mean of rounds; operator/scoped "
            f"{cpu['operator'] / cpu['scoped'] * 100:.0f} %"),
        row("p50, operator key", round(m_op["p50_us"] / 1000, 2), "ms", "median round"),
        row("p99, operator key", round(m_op["p99_us"] / 1000, 2), "ms", "median round"),
        row("p50, scoped key", round(m_sc["p50_us"] / 1000, 2), "ms", "median round"),
        row("p99, scoped key", round(m_sc["p99_us"] / 1000, 2), "ms", "median round"),
        row("scoped key checks in PostgreSQL", round(result["lookups"] / scoped_s, 1), "/s",
            f"{result['lookups']:,} reads of api_keys in {scoped_s:.0f} s of scoped load "
            "(a 0.5 s answer cache per key would need 2/s)"),
        row("ingest errors", sum(sum(e.values()) for e in errors.values()), "requests",
            "non-2xx or socket errors; " + "; ".join(
                f"{name}: " + (", ".join(f"{n} {k}" for k, n in e.items() if n) or "none")
                for name, e in errors.items())),
    ]  # fmt: skip
    if result["tracebacks"]:
        rows.append(row("ingest tracebacks", result["tracebacks"], "count", "see ingest log"))
    return rows


# --- 2. fan-out in one application among many ----------------------------------------


async def _application_a(
    world: DispatchWorld, sink: SinkProcess
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    app_id = uuid.uuid4()
    subs = [uuid.uuid4() for _ in range(SUBSCRIPTIONS)]
    async with world.engine.begin() as conn:
        await conn.execute(
            text(_INSERT_APPLICATION), {"id": app_id, "uid": "bench-a", "name": "Bench A"}
        )
        await conn.execute(
            text(_INSERT_SUBSCRIPTION),
            [
                {"id": s, "app": app_id, "url": sink.url(f"/a/{i}"), "event_type": EVENT_TYPE}
                for i, s in enumerate(subs)
            ],
        )
    return app_id, subs


async def _insert_others(world: DispatchWorld, sink: SinkProcess) -> float:
    """10,000 applications x 10 subscriptions to the same event type, on the same sink
    (so a delivery that crossed applications would be seen); returns seconds taken."""
    started = time.monotonic()
    async with world.engine.begin() as conn:
        await conn.execute(text(_INSERT_OTHER_APPLICATIONS), {"n": OTHER_APPLICATIONS})
        await conn.execute(
            text(_INSERT_OTHER_SUBSCRIPTIONS),
            {"url": sink.url("/other"), "per_app": SUBSCRIPTIONS, "event_type": EVENT_TYPE},
        )
    return time.monotonic() - started


async def _remove_all(world: DispatchWorld) -> None:
    """Back to the default application alone: the key comparison measures keys, not a
    cache that a whole-table reload of 100,000 rows keeps busy (as it did before the
    change log, at 1 ms of CPU per request)."""
    async with world.engine.begin() as conn:
        await conn.execute(text("DELETE FROM subscriptions"))
        await conn.execute(
            text("DELETE FROM applications WHERE id <> :default"),
            {"default": DEFAULT_APPLICATION_ID},
        )


@dataclass
class Round:
    received_at: float
    done_at: float

    @property
    def seconds(self) -> float:
        return self.done_at - self.received_at


@dataclass
class FanOutProbe:
    """Events for application A on a fixed clock, their arrivals at the sink, and the
    dispatcher's subscription cache refreshes, watched on its metrics
    (``hookstream_subscription_cache_loaded_timestamp_seconds`` holds when the last
    completed read began; it is set when the read ends)."""

    world: DispatchWorld
    sink: SinkProcess
    metrics_url: str
    app_id: uuid.UUID
    subs: list[uuid.UUID]
    expected: set[str] = field(default_factory=set)
    # refresh start → when the watcher first saw it completed (its end, within 50 ms)
    refreshes: dict[float, float] = field(default_factory=dict)

    async def watch(self) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                try:
                    began = sample((await client.get(self.metrics_url)).text, CACHE_LOADED)
                except httpx.TransportError:  # the dispatcher is still starting
                    began = 0.0
                if began and began not in self.refreshes:
                    self.refreshes[began] = time.time()
                await asyncio.sleep(0.05)

    async def refreshed(self) -> float:
        """Announce a change and wait until the cache has read it; returns how long the
        read took."""
        since = time.time()
        await notify_changed(self.world.redis, self.world.settings.topic_prefix, self.subs[0])
        async with asyncio.timeout(60):
            while not (done := [b for b in self.refreshes if b >= since]):
                await asyncio.sleep(0.02)
        return self.refreshes[done[0]] - done[0]

    async def rounds(self, count: int) -> list[Round]:
        """One event every ROUND_GAP_S whatever the previous became (open loop: a stall
        delays every event sent during it, as it would real traffic); each round ends
        at the first arrival of its event's last delivery."""
        sent: list[tuple[EventRecord, set[str]]] = []
        clock = time.monotonic()
        for n in range(count):
            event = EventRecord(
                event_id=uuid.uuid4(),
                event_type=EVENT_TYPE,
                received_at=datetime.now(UTC),
                content_type="application/json",
                body=b'{"round": %d}' % n,
                application_id=self.app_id,
            )
            ids = {str(delivery_id_for(event.event_id, s)) for s in self.subs}
            self.expected |= ids
            await self.world.produce_event(event)
            sent.append((event, ids))
            clock += ROUND_GAP_S
            await asyncio.sleep(max(0.0, clock - time.monotonic()))
        async with asyncio.timeout(60):
            while not self.expected <= (arrivals := self.sink.arrivals()).keys():
                await asyncio.sleep(0.05)
        return [
            Round(event.received_at.timestamp(), max(min(arrivals[d]) for d in ids))
            for event, ids in sent
        ]

    def refreshes_during(self, rounds: list[Round]) -> list[tuple[float, float]]:
        """The refreshes (start, end) that began or ended within the rounds' span."""
        first, last = rounds[0].received_at, max(r.done_at for r in rounds)
        return [(b, e) for b, e in sorted(self.refreshes.items()) if b < last and e > first]

    @staticmethod
    def overlapped(rounds: list[Round], refreshes: list[tuple[float, float]]) -> list[bool]:
        return [any(b < r.done_at and e > r.received_at for b, e in refreshes) for r in rounds]


async def _fanout_rounds(
    stack: IsolatedStack, sink: SinkProcess, metrics_port: int
) -> dict[str, Any]:
    async with DispatchWorld(stack.settings()) as world:
        app_id, subs = await _application_a(world, sink)
        probe = FanOutProbe(world, sink, f"http://127.0.0.1:{metrics_port}/metrics", app_id, subs)
        watcher = asyncio.create_task(probe.watch())
        try:
            await probe.refreshed()
            await probe.rounds(1)  # untimed: the dispatcher may still be joining its group
            refresh_alone = await probe.refreshed()
            alone = await probe.rounds(ROUNDS)
            insert_s = await _insert_others(world, sink)
            refresh_crowded = await probe.refreshed()
            crowded = await probe.rounds(ROUNDS)
        finally:
            watcher.cancel()
        await asyncio.sleep(LEAK_GRACE_S)
        arrivals = sink.arrivals()
        total = await world.scalar("SELECT count(*) FROM subscriptions")
        await _remove_all(world)
    during = {"alone": probe.refreshes_during(alone), "crowded": probe.refreshes_during(crowded)}
    return {
        "alone": [r.seconds for r in alone],
        "crowded": [r.seconds for r in crowded],
        "overlapped": {
            "alone": probe.overlapped(alone, during["alone"]),
            "crowded": probe.overlapped(crowded, during["crowded"]),
        },
        "refreshes": {name: [e - b for b, e in rs] for name, rs in during.items()},
        "insert_s": insert_s,
        "refresh_alone": refresh_alone,
        "refresh_crowded": refresh_crowded,
        "subscriptions": total,
        "outside_a": sum(len(ts) for d, ts in arrivals.items() if d not in probe.expected),
        "duplicates": sum(len(ts) - 1 for d, ts in arrivals.items() if d in probe.expected),
    }


def _fanout(stack: IsolatedStack, workdir: Path) -> dict[str, Any]:
    metrics_port = free_port()
    with SinkProcess() as sink:
        dispatcher = ServiceProcess(
            stack,
            "dispatcher",
            log_dir=workdir,
            HOOKSTREAM_METRICS_PORT=str(metrics_port),
            HOOKSTREAM_LOG_LEVEL="WARNING",
        )
        try:
            result = asyncio.run(_fanout_rounds(stack, sink, metrics_port))
        finally:
            dispatcher.stop()
        result["tracebacks"] = dispatcher.log().count("Traceback")
    return result


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def _fanout_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    ms = {name: [t * 1000 for t in result[name]] for name in ("alone", "crowded")}
    med = {name: statistics.median(v) for name, v in ms.items()}
    p95 = {name: _p95(v) for name, v in ms.items()}
    spread = {name: f"best {min(v):.1f}, worst {max(v):.1f} ms" for name, v in ms.items()}
    clear = {
        name: [t for t, hit in zip(v, result["overlapped"][name], strict=True) if not hit] or v
        for name, v in ms.items()
    }
    hit = {name: len(v) - len(clear[name]) for name, v in ms.items()}
    refresh = {name: [t * 1000 for t in v] for name, v in result["refreshes"].items()}
    schedule = f"{ROUNDS} events {ROUND_GAP_S} s apart (open loop)"
    crowd = f"{OTHER_APPLICATIONS:,} applications"
    return [
        row("fan-out to 10, application alone", round(med["alone"], 1), "ms",
            f"median; received_at → last of its 10 deliveries at the sink; {schedule}; "
            f"{spread['alone']}"),
        row("… p95, application alone", round(p95["alone"], 1), "ms",
            f"events that overlapped a cache refresh: {hit['alone']} of {ROUNDS}"),
        row(f"fan-out to 10, among {crowd}", round(med["crowded"], 1), "ms",
            f"median; after inserting {OTHER_APPLICATIONS:,} other applications x "
            f"{SUBSCRIPTIONS} subscriptions of the same event type on the same sink "
            f"({result['subscriptions']:,} rows); {spread['crowded']}"),
        row(f"… p95, among {crowd}", round(p95["crowded"], 1), "ms",
            f"events that overlapped a cache refresh: {hit['crowded']} of {ROUNDS}"),
        row("crowded / alone, median", round(med["crowded"] / med["alone"] * 100, 1), "%",
            "same run, same dispatcher, same application"),
        row("crowded / alone, p95", round(p95["crowded"] / p95["alone"] * 100, 1), "%", ""),
        row(f"… among {crowd}, events clear of a refresh", round(statistics.median(
            clear["crowded"]), 1), "ms",
            f"median of {len(clear['crowded'])}; p95 {_p95(clear['crowded']):.1f} ms "
            f"(alone, the same: {statistics.median(clear['alone']):.1f}, "
            f"p95 {_p95(clear['alone']):.1f} ms)"),
        row("deliveries outside the application", result["outside_a"], "requests",
            f"arrivals at the sink that were not A's, {LEAK_GRACE_S:.0f} s after the last "
            f"event (must be 0); duplicates of A's: {result['duplicates']}"),
        row("dispatcher cache refresh, 10 subscriptions", round(result["refresh_alone"] * 1000),
            "ms", "after a change is announced: start of the read → its end, from the cache "
            f"gauge polled every 50 ms; during the events: {_list(refresh['alone'])} ms"),
        row(f"dispatcher cache refresh, {result['subscriptions']:,} subscriptions",
            round(result["refresh_crowded"] * 1000), "ms",
            f"the same, after the insert; during the events: {_list(refresh['crowded'])} ms"),
        row("insert 10,000 applications x 10 subscriptions", round(result["insert_s"], 2), "s",
            "two INSERT … SELECT generate_series"),
    ] + ([row("dispatcher tracebacks", result["tracebacks"], "count", "see its log")]
         if result["tracebacks"] else [])  # fmt: skip


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:,.0f}" for v in values) or "none"


def run(stack: IsolatedStack) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-applications-") as tmp:
        workdir = Path(tmp)
        fanout = _fanout(stack, workdir)
        ingest = _ingest(stack, workdir)
    return _ingest_rows(ingest) + _fanout_rows(fanout)
