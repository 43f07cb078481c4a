"""The tracing kit (shared/tracing.py): when it is on, and that off means off.

The end-to-end trace across processes is tests/integration/test_tracing.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from shared import tracing
from shared.records import DeliveryJob, EventRecord
from tests.support.stack import ROOT

ENDPOINT = "http://127.0.0.1:4318"
ON = {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("env", "off"),
    [
        ({}, "no OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, "no OTEL_EXPORTER"),
        (ON, None),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ENDPOINT + "/v1/traces"}, None),
        ({**ON, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, None),
        ({**ON, "OTEL_SDK_DISABLED": "TRUE"}, "OTEL_SDK_DISABLED"),
        ({**ON, "OTEL_TRACES_EXPORTER": "none"}, "none"),
        ({**ON, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
        ({**ON, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "http/json"),
    ],
)  # fmt: skip
def test_on_only_with_an_exporter_endpoint(env: dict[str, str], off: str | None) -> None:
    reason = tracing.configured(env)
    if off is None:
        assert reason is None
    else:
        assert reason is not None
        assert off in reason


def test_off_means_off() -> None:
    """Without an endpoint: no SDK loaded, no provider, no span, no middleware, no header
    in any record a service writes."""
    code = """
import json, sys
from opentelemetry import trace
from shared import tracing
from shared.runner import start_tracing
from shared.settings import Settings
from services.ingest.app import create_app
from services.ingest.request_tracing import RequestTracing
import services.dispatcher.__main__, services.retry_scheduler.__main__
from shared.records import DeliveryJob, EventRecord

traces = start_tracing("probe")
app = create_app(Settings(allow_no_api_key=True))
span = tracing.tracer().start_span("x")
traces.shutdown()
print(json.dumps({
    "enabled": tracing.enabled,
    "provider": traces.provider is not None,
    # redis-py imports the metrics SDK when it is installed; the tracing SDK and the
    # exporter are only imported by tracing.setup going on.
    "sdk": sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk.trace",
                                                         "opentelemetry.exporter"))),
    "provider_set": type(trace.get_tracer_provider()).__name__,
    "middleware": [m.cls.__name__ for m in app.user_middleware],
    "recording": span.is_recording(),
}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOOKSTREAM_LOG_LEVEL": "ERROR"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    state = json.loads(done.stdout)
    assert state == {
        "enabled": False,
        "provider": False,
        "sdk": [],
        "provider_set": "ProxyTracerProvider",
        "middleware": state["middleware"],
        "recording": False,
    }
    assert "RequestTracing" not in state["middleware"]
    assert "IngestFastPath" in state["middleware"]


def _event(**extra: bytes) -> EventRecord:
    return EventRecord(
        event_id=uuid.uuid4(),
        event_type="order.paid",
        received_at=datetime.now(UTC),
        content_type="application/json",
        body=b"{}",
        subscription_id=uuid.uuid4(),
        extra=extra,
    )


def test_records_without_a_trace_carry_no_trace_header() -> None:
    event = _event()
    assert EventRecord.decode(event.body, event.headers()).extra == {}
    job = DeliveryJob.for_event(event, uuid.uuid4())
    assert not {name for name, _ in job.headers()} & set(tracing.TRACE_HEADERS)


def test_trace_context_travels_from_event_to_job_to_retry() -> None:
    event = _event(traceparent=PARENT.encode(), tracestate=b"vendor=1")
    decoded = EventRecord.decode(event.body, event.headers())
    assert decoded.extra == {"traceparent": PARENT.encode(), "tracestate": b"vendor=1"}
    job = DeliveryJob.for_event(decoded, uuid.uuid4())
    retry = job.next_attempt(datetime.now(UTC), "500")
    again = DeliveryJob.decode(retry.body, retry.headers())
    assert again.extra["traceparent"] == PARENT.encode()
    parent = trace.get_current_span(tracing.extract(again.extra)).get_span_context()
    assert f"{parent.trace_id:032x}-{parent.span_id:016x}" == PARENT[3:52]
    assert parent.trace_state.get("vendor") == "1"


def test_extract_ignores_a_malformed_traceparent_and_reads_raw_http_headers() -> None:
    assert not trace.get_current_span(tracing.extract({"traceparent": b"garbage"})).is_recording()
    bad = trace.get_current_span(tracing.extract([("traceparent", b"00-zz-zz-01")]))
    assert not bad.get_span_context().is_valid
    raw = [(b"content-type", b"application/json"), (b"TraceParent", PARENT.encode())]
    context = trace.get_current_span(tracing.extract(raw)).get_span_context()
    assert context.is_valid
    assert context.is_remote


def test_a_span_replaces_the_trace_headers_it_is_given() -> None:
    tracer = TracerProvider().get_tracer("test")
    span = tracer.start_span("publish", context=tracing.extract({"traceparent": PARENT.encode()}))
    headers = [("event_id", b"1"), ("traceparent", PARENT.encode()), ("tracestate", b"a=1")]
    replaced = tracing.replace_trace_headers(headers, span)
    names = [name for name, _ in replaced]
    assert names.count("traceparent") == 1
    assert names[0] == "event_id"
    ids = span.get_span_context()
    assert dict(replaced)["traceparent"] == f"00-{ids.trace_id:032x}-{ids.span_id:016x}-01".encode()
    assert ids.trace_id == int(PARENT[3:35], 16)
