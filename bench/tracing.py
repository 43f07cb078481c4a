"""What tracing costs: ingest and end to end with tracing on (100 % sampled) vs off.

Same run, side by side, because this 2-core machine is noisy:

1. ingest: four servers loaded by the same wrk command as the ingest section, in turn,
   round after round: the bare FastAPI handler, ingest with tracing off (no OTEL_*
   endpoint: the default), ingest with tracing on (OTLP/HTTP to a local receiver,
   ``OTEL_TRACES_SAMPLER=always_on``), and on with one trace in ten sampled. Off vs bare
   is the ratio the ingest section tracks (≥ 60 %; 78-82 % in earlier runs): off must
   leave it where it was.
2. end to end: the delivery section's run via ingest (wrk for 5 s, every accepted
   webhook delivered to the sink), off then on, twice, on a fresh stack.

The receiver is a separate process (``python -m bench.tracing receiver PORT``) that
decodes each export, counts its spans and answers as a collector would. The batch span
processor drops spans when its queue (2,048) is full rather than slow the service: the
spans received are reported beside the requests.

Run alone: ``python -m bench tracing``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx

from bench.delivery import N_E2E, end_to_end
from bench.ingest import (
    BODY,
    DURATION_S,
    HMAC_KEY,
    LUA,
    ROUNDS,
    WARMUP_S,
    WRK_REPORT,
    cpu_seconds,
    wrk,
)
from tests.support.broker import IngestServer
from tests.support.procs import ChildServer, free_port
from tests.support.stack import ROOT, IsolatedStack
from tests.support.targets import SinkProcess

SECTION = "tracing"
E2E_ROUNDS = 2
TEN_PERCENT = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}


class Receiver(ChildServer):
    """An OTLP/HTTP trace receiver in its own process; ``stats()`` counts what it got."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.tracing", "receiver", str(self.port)],
            cwd=ROOT,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.stats()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.1)

    def stats(self, reset: bool = False) -> dict[str, int]:
        path = "/_reset" if reset else "/_stats"
        with urllib.request.urlopen(self.endpoint + path, timeout=5) as r:  # noqa: S310
            stats: dict[str, int] = json.loads(r.read())
        return stats

    def env(self) -> dict[str, str]:
        """Tracing on, every trace sampled, exported to this receiver."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint, "OTEL_TRACES_SAMPLER": "always_on"}


def serve_receiver(port: int) -> None:
    from aiohttp import web
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    counts = {"exports": 0, "spans": 0}
    answer = ExportTraceServiceResponse().SerializeToString()

    async def export(request: web.Request) -> web.Response:
        spans = ExportTraceServiceRequest.FromString(await request.read())
        counts["exports"] += 1
        counts["spans"] += sum(
            len(scope.spans) for rs in spans.resource_spans for scope in rs.scope_spans
        )
        return web.Response(body=answer, content_type="application/x-protobuf")

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(counts)

    async def reset(_: web.Request) -> web.Response:
        body = dict(counts)
        counts.update(exports=0, spans=0)
        return web.json_response(body)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", export)
    app.router.add_get("/_stats", stats)
    app.router.add_get("/_reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# --- 1. ingest ----------------------------------------------------------------------------


def ingest(stack: IsolatedStack, receiver: Receiver) -> list[dict[str, Any]]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    signature = "sha256=" + hmac.new(HMAC_KEY.encode(), BODY, hashlib.sha256).hexdigest()
    script = workdir / "ingest.lua"
    script.write_text(LUA.format(body=json.dumps(BODY.decode()), signature=signature) + WRK_REPORT)
    quiet = {"HOOKSTREAM_LOG_LEVEL": "WARNING"}
    servers = {
        "off": IngestServer(stack, workdir, **quiet),
        "on": IngestServer(stack, workdir, **quiet, **receiver.env()),
        "on10": IngestServer(stack, workdir, **quiet | receiver.env() | TEN_PERCENT),
    }
    bare_port = free_port()
    bare = subprocess.Popen(
        [sys.executable, "-m", "bench.ingest", "bare", str(bare_port)],
        cwd=ROOT,
        env=stack.process_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runs: dict[str, list[dict[str, Any]]] = {"bare": [], "off": [], "on": [], "on10": []}
    spans = 0
    try:
        for server in servers.values():
            server.wait_healthy()
        sub = httpx.post(
            f"{servers['off'].url}/subscriptions/",
            # Never delivered (no dispatcher runs on this stack); loopback all the same.
            json={"target_url": "http://127.0.0.1:9/hook", "secret_key": HMAC_KEY},
            headers=servers["off"].auth,
            timeout=10,
        ).json()
        urls = {name: f"{s.url}/ingest/{sub['id']}" for name, s in servers.items()}
        urls["bare"] = f"http://127.0.0.1:{bare_port}/ingest/{sub['id']}"
        pids = {name: s.proc.proc.pid for name, s in servers.items()} | {"bare": bare.pid}
        for name in servers:  # every cache holds the subscription before timing
            _accepted(urls[name], signature)
        _wait_bare(urls["bare"], bare)
        for url in urls.values():
            wrk(url, script, WARMUP_S)
        receiver.stats(reset=True)
        for _ in range(ROUNDS):
            for name in runs:
                before = cpu_seconds(pids[name])
                result = wrk(urls[name], script, DURATION_S)
                result["cpu_us"] = (cpu_seconds(pids[name]) - before) / result["requests"] * 1e6
                runs[name].append(result)
                print(
                    f"[bench] tracing ingest {name}: {result['rps']:.0f} req/s "
                    f"p99 {result['p99_us'] / 1000:.2f} ms cpu {result['cpu_us']:.0f} µs/req "
                    f"non2xx {result['non2xx']}",
                    file=sys.stderr,
                )
        time.sleep(6)  # one export interval (OTEL_BSP_SCHEDULE_DELAY, 5 s) for the tail
        spans = receiver.stats(reset=True)["spans"]
    finally:
        for server in servers.values():
            server.stop()
        bare.terminate()
        bare.wait(20)
        shutil.rmtree(workdir, ignore_errors=True)

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    rps = {name: median([r["rps"] for r in rs]) for name, rs in runs.items()}
    cpu = {name: sum(r["cpu_us"] for r in rs) / len(rs) for name, rs in runs.items()}
    pairs = list(zip(runs["bare"], runs["off"], runs["on"], runs["on10"], strict=True))
    off_vs_bare = median([off["rps"] / bare["rps"] * 100 for bare, off, _, _ in pairs])
    on_vs_off = median([on["rps"] / off["rps"] * 100 for _, off, on, _ in pairs])
    on10_vs_off = median([on10["rps"] / off["rps"] * 100 for _, off, _, on10 in pairs])
    requests_on = sum(r["requests"] for r in runs["on"])
    requests_on10 = sum(r["requests"] for r in runs["on10"])
    errors = sum(r["non2xx"] + r["timeout"] for rs in runs.values() for r in rs)
    settings = f"wrk -t1 -c32 -d{DURATION_S}s, median of {ROUNDS} rounds (all four in turn)"
    rounds = "; ".join(
        f"{name} " + ", ".join(f"{r['rps']:.0f}" for r in rs) for name, rs in runs.items()
    )
    return [
        row("ingest, tracing off", rps["off"], "req/s", f"signed POST /ingest; {settings}"),
        row("ingest, tracing on", rps["on"], "req/s", "100 % sampled, OTLP/HTTP, local receiver"),
        row("bare handler", rps["bare"], "req/s", f"FastAPI 202 without work; rounds {rounds}"),
        row("ingest off / bare", off_vs_bare, "%",
            "median of back-to-back rounds; the ingest section's ingest_vs_bare (78-82 % before)"),
        row("ingest on / off", on_vs_off, "%", "throughput kept with tracing on, median of rounds"),
        row("ingest, tracing on at 10 %", rps["on10"], "req/s",
            "OTEL_TRACES_SAMPLER=parentbased_traceidratio, _ARG=0.1"),
        row("ingest on at 10 % / off", on10_vs_off, "%", "median of rounds"),
        row("ingest CPU, tracing off", cpu["off"], "µs/request", "server process, mean of rounds"),
        row("ingest CPU, tracing on", cpu["on"], "µs/request",
            f"+{cpu['on'] - cpu['off']:.0f} µs: server + publish span, their export"),
        row("ingest CPU, tracing on at 10 %", cpu["on10"], "µs/request",
            f"+{cpu['on10'] - cpu['off']:.0f} µs"),
        row("spans received, ingest", spans, "spans",
            f"100 %: {requests_on:,} requests x 2 spans; 10 %: {requests_on10:,} requests; "
            "short of that = dropped by a full batch queue"),
        row("ingest errors", errors, "requests", "non-2xx or timeouts, all servers"),
    ]  # fmt: skip


def _accepted(url: str, signature: str) -> None:
    r = httpx.post(url, content=BODY, headers={"x-hub-signature-256": signature}, timeout=10)
    assert r.status_code == 202, r.text


def _wait_bare(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            httpx.post(url, content=b"{}", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(url)


# --- 2. end to end ------------------------------------------------------------------------


def e2e(stack: IsolatedStack, receiver: Receiver) -> list[dict[str, Any]]:
    results: dict[str, list[tuple[float, float, dict[str, float]]]] = {"off": [], "on": []}
    spans = 0
    with SinkProcess() as sink:
        for _ in range(E2E_ROUNDS):
            for name, env in (("off", {}), ("on", receiver.env())):
                receiver.stats(reset=True)
                result = end_to_end(stack, sink, N_E2E, via_ingest=True, env=env)
                assert result is not None, "ingest did not start"
                results[name].append(result)
                if name == "on":
                    spans += receiver.stats()["spans"]
                print(
                    f"[bench] tracing e2e {name}: {result[0]:.0f} deliveries/s, ingest "
                    f"{result[1]:.0f}/s, p50 {result[2]['p50']:.0f} ms",
                    file=sys.stderr,
                )
    rows = []
    for name in ("off", "on"):
        rs = results[name]
        rate = ", ".join(f"{r[0]:,.0f}" for r in rs)
        p50 = ", ".join(f"{r[2]['p50']:,.0f}" for r in rs)
        rows += [
            row(f"end to end via ingest, tracing {name}", sum(r[0] for r in rs) / len(rs),
                "deliveries/s", f"mean of {len(rs)} runs ({rate}); wrk 5 s, 64 connections"),
            row(f"p50 received→delivered, tracing {name}", sum(r[2]["p50"] for r in rs) / len(rs),
                "ms", f"runs {p50}"),
        ]  # fmt: skip
    off = sum(r[0] for r in results["off"])
    on = sum(r[0] for r in results["on"])
    rows += [
        row("end to end on / off", on / off * 100, "%", "deliveries/s kept with tracing on"),
        row("spans received, end to end", spans, "spans",
            "server, publish, fan-out, job publish, deliver, POST per webhook (6), "
            "less what the batch queues dropped"),
    ]  # fmt: skip
    return rows


def row(metric: str, value: float | int, unit: str, note: str = "") -> dict[str, Any]:
    value = round(value, 2) if isinstance(value, float) else value
    return {"section": SECTION, "metric": metric, "value": value, "unit": unit, "note": note}


def run(stack: IsolatedStack) -> list[dict[str, Any]]:
    with Receiver() as receiver:
        rows = ingest(stack, receiver)
        # A stack of its own: the ingest rounds left ~100,000 events on this one's topic.
        fresh = IsolatedStack()
        fresh.up()
        try:
            return rows + e2e(fresh, receiver)
        finally:
            fresh.down()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "receiver":
        serve_receiver(int(sys.argv[2]))
    else:
        print("usage: python -m bench.tracing receiver PORT   (the bench: python -m bench tracing)")
        raise SystemExit(2)
