"""Tracing end to end (issue 18): one trace from the producer's request to every attempt.

Real ingest, dispatcher and retry scheduler processes export to an OTLP/HTTP receiver in
this test's event loop (aiohttp on 127.0.0.1, decoding ``ExportTraceServiceRequest``
protobuf as a collector would). One webhook, sent with the producer's own
``traceparent``, fails its first attempt (500) and succeeds on its retry (schedule 1s):
every span belongs to the producer's trace, each with the parent the design says, and
the target saw the attempt spans' ``traceparent``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

from tests.support.broker import IngestServer
from tests.support.procs import ServiceProcess, free_port
from tests.support.stack import IsolatedStack
from tests.support.targets import TargetServer

pytestmark = pytest.mark.slow

SECRET = "tracing-test-secret"
# The producer's own trace: Hookstream's spans must continue it.
PRODUCER_TRACE = secrets.token_hex(16)
PRODUCER_SPAN = secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, object]
    error: bool


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class OtlpReceiver:
    """An OTLP/HTTP trace endpoint (``POST /v1/traces``, protobuf) keeping every span."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[ReceivedSpan] = []
        self._arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> OtlpReceiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _export(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            service=str(resource.get("service.name")),
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            error=span.status.code == span.status.STATUS_CODE_ERROR,
                        )
                    )
        self._arrived.set()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def wait_for(self, trace_id: str, count: int, timeout: float = 30) -> list[ReceivedSpan]:
        try:
            async with asyncio.timeout(timeout):
                while len(got := [s for s in self.spans if s.trace_id == trace_id]) < count:
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            names = [(s.service, s.name) for s in self.spans if s.trace_id == trace_id]
            raise AssertionError(f"{count} spans expected, got {names}") from None
        return got


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    async with OtlpReceiver() as r:
        yield r


@pytest.fixture
async def traced(
    module_stack: IsolatedStack, receiver: OtlpReceiver, tmp_path: Path
) -> AsyncIterator[tuple[IngestServer, ServiceProcess]]:
    """Ingest, dispatcher and retry scheduler exporting to ``receiver``. They are stopped
    from a thread, so that this loop's receiver takes the spans they flush on the way out."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        # Export every 100 ms rather than every 5 s: the test waits for the spans.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "HOOKSTREAM_RETRY_SCHEDULE": "1s",
    }
    procs = [
        ServiceProcess(module_stack, "dispatcher", log_dir=tmp_path, **env),
        ServiceProcess(module_stack, "retry_scheduler", log_dir=tmp_path, **env),
    ]
    ingest = IngestServer(module_stack, tmp_path, **env)
    procs.append(ingest.proc)
    try:
        await asyncio.to_thread(ingest.wait_healthy)
        yield ingest, procs[0]
    finally:
        codes = await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs))
    for proc, code in zip(procs, codes, strict=True):
        # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully.
        assert code in ((0, -signal.SIGTERM) if proc is ingest.proc else (0,)), proc.log()[-3000:]
        assert "Traceback" not in proc.log(), proc.log()[-3000:]
        assert '"tracing on"' in proc.log()


async def test_one_trace_from_ingest_to_the_retried_attempt(
    traced: tuple[IngestServer, ServiceProcess],
    receiver: OtlpReceiver,
    target: TargetServer,
) -> None:
    ingest, dispatcher = traced
    target.reply("/hook", 500)
    async with httpx.AsyncClient(base_url=ingest.url, headers=ingest.auth, timeout=30) as client:
        r = await client.post(
            "/subscriptions/",
            json={"target_url": target.url("/hook?token=secret-in-url"), "secret_key": SECRET},
        )
        assert r.status_code == 201, r.text
        body = b'{"order": 42}'
        signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        r = await client.post(
            f"/ingest/{r.json()['id']}",
            content=body,
            headers={
                "x-hub-signature-256": signature,
                "traceparent": f"00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01",
            },
        )
        assert r.status_code == 202, r.text
    first = (await target.wait_for(1, timeout=30))[0]
    target.reply("/hook", 200)  # the retry (1 s later) succeeds
    requests = await target.wait_for(2, timeout=30)
    assert [r.path for r in requests] == ["/hook", "/hook"]

    # ingest, publish, fan-out, job publish, and per attempt: deliver + POST; the first
    # also schedules its retry, which the retry scheduler re-publishes.
    spans = await receiver.wait_for(PRODUCER_TRACE, 10)
    by_name: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name.split(" ")[0], []).append(span)

    (server,) = [s for s in spans if s.kind == SpanProto.SPAN_KIND_SERVER]
    assert server.name == "POST /ingest/{subscription_id}"
    assert server.parent_id == PRODUCER_SPAN  # the producer's traceparent is honoured
    assert server.service == "hookstream-ingest"
    assert server.attributes["http.response.status_code"] == 202

    (publish_event,) = [s for s in by_name["publish"] if s.service == "hookstream-ingest"]
    assert publish_event.kind == SpanProto.SPAN_KIND_PRODUCER
    assert publish_event.name.endswith(".events")
    assert publish_event.parent_id == server.span_id

    (fan_out,) = by_name["fan-out"]
    assert fan_out.kind == SpanProto.SPAN_KIND_CONSUMER
    assert fan_out.service == "hookstream-dispatcher"
    assert fan_out.parent_id == publish_event.span_id

    (publish_job,) = [s for s in by_name["publish"] if s.service == "hookstream-dispatcher"]
    assert publish_job.name.endswith(".deliveries")
    assert publish_job.parent_id == fan_out.span_id

    delivers = sorted(by_name["deliver"], key=lambda s: str(s.attributes["hookstream.attempt"]))
    assert [d.attributes["hookstream.attempt"] for d in delivers] == [1, 2]
    attempts = [s for s in spans if s.kind == SpanProto.SPAN_KIND_CLIENT]
    assert len(attempts) == 2
    attempt_of = {a.parent_id: a for a in attempts}
    failed, succeeded = attempt_of[delivers[0].span_id], attempt_of[delivers[1].span_id]
    assert delivers[0].parent_id == publish_job.span_id
    assert failed.attributes["http.response.status_code"] == 500
    assert failed.error
    assert succeeded.attributes["http.response.status_code"] == 200
    assert not succeeded.error
    for attempt in (failed, succeeded):
        assert attempt.attributes["server.address"] == "127.0.0.1"
        assert attempt.attributes["server.port"] == target.port

    (retry,) = by_name["retry"]
    assert retry.name.endswith(".retry.1s")
    assert retry.kind == SpanProto.SPAN_KIND_PRODUCER
    assert retry.parent_id == delivers[0].span_id
    (republish,) = by_name["re-publish"]
    assert republish.service == "hookstream-retry-scheduler"
    assert republish.parent_id == retry.span_id
    assert delivers[1].parent_id == republish.span_id

    # The target saw each attempt's own span as the parent of its request.
    assert requests[0] is first
    assert first.headers["traceparent"] == f"00-{PRODUCER_TRACE}-{failed.span_id}-01"
    assert requests[1].headers["traceparent"] == f"00-{PRODUCER_TRACE}-{succeeded.span_id}-01"

    # Never the target's URL (its query holds a token) in any span.
    assert not [s for s in spans if "secret-in-url" in json.dumps(s.attributes, default=str)]

    # The dispatcher's log line about the failed attempt names the trace and its span.
    lines = [json.loads(line) for line in dispatcher.log().splitlines() if line.startswith("{")]
    (failure,) = [x for x in lines if x.get("event") == "delivery not successful"]
    assert failure["trace_id"] == PRODUCER_TRACE
    assert failure["span_id"] == delivers[0].span_id
