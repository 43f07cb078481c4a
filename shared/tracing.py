"""OpenTelemetry tracing (design §12): one trace from the producer's request to every attempt.

Configured by the standard ``OTEL_*`` variables only, read by the SDK itself:
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), ``_HEADERS``,
``_TIMEOUT``, ``_COMPRESSION``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER`` (+ ``_ARG``), ``OTEL_BSP_*``, ``OTEL_SDK_DISABLED``. Tracing is
on only when an exporter endpoint is set; the protocol is OTLP over HTTP with protobuf
(``http/protobuf``, the default of ``OTEL_EXPORTER_OTLP_PROTOCOL``), the one installed.

Off, nothing here runs on a hot path: callers test ``tracing.enabled`` (one attribute
read) and create no span and inject no header when it is False.

The W3C context travels in Kafka record headers (``traceparent``, ``tracestate``): each
stage starts its span as a child of the record it read and writes its own span's
context into the records it publishes, so the attempts of a delivery, retries hours
later included, belong to the trace of the ingest request. ``DeliveryJob.extra`` and
``EventRecord.extra`` carry the headers through code that does not trace.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

# The one cheap boolean hot paths check; set by ``setup`` before any service code runs.
enabled = False

TRACE_HEADERS = ("traceparent", "tracestate")
NO_ENDPOINT = "no OTEL_EXPORTER_OTLP_ENDPOINT"  # the usual reason tracing is off
HTTP_PROTOBUF = "http/protobuf"

_propagator = TraceContextTextMapPropagator()
_tracer: Tracer = trace.NoOpTracer()


def configured(environ: Mapping[str, str] = os.environ) -> str | None:
    """Why tracing stays off (None: it goes on). Off is the default."""
    if not (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        return NO_ENDPOINT
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "OTEL_SDK_DISABLED is true"
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return "OTEL_TRACES_EXPORTER is none"
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or HTTP_PROTOBUF
    )
    if protocol.strip().lower() != HTTP_PROTOBUF:
        return f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r} is not supported (only http/protobuf)"
    return None


@dataclass(slots=True)
class Tracing:
    """What ``setup`` started; ``shutdown`` exports what is left (the runner's last step)."""

    provider: TracerProvider | None = None

    def shutdown(self, timeout_s: float = 5.0) -> None:
        global enabled, _tracer
        provider = self.provider
        self.provider = None
        enabled = False
        _tracer = trace.NoOpTracer()
        if provider is None:
            return
        # Bounded: a collector that is down must not hold a stopping service for long
        # (each export call has its own OTEL_EXPORTER_OTLP_TIMEOUT, 10 s by default).
        provider.force_flush(timeout_millis=int(timeout_s * 1000))
        provider.shutdown()


def setup(service: str, environ: Mapping[str, str] = os.environ) -> tuple[Tracing, str | None]:
    """Start the SDK when an exporter endpoint is configured. Returns the handle and why
    tracing is off (None when on). ``environ`` decides on or off; the SDK then reads its
    settings from the process environment. Its modules are imported only when it goes on."""
    global enabled, _tracer
    off = configured(environ)
    if off is not None:
        return Tracing(), off
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = Resource.create({SERVICE_NAME: f"hookstream-{service.replace('_', '-')}"})
    # The sampler comes from OTEL_TRACES_SAMPLER (default parentbased_always_on: an
    # incoming traceparent's sampled flag is followed), the batch settings from OTEL_BSP_*.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("hookstream")
    enabled = True
    return Tracing(provider), None


def tracer() -> Tracer:
    return _tracer


# --- context in headers -----------------------------------------------------------------


def extract(headers: Mapping[str, bytes] | Iterable[tuple[str | bytes, bytes]]) -> Context:
    """The W3C context a Kafka record (or raw ASGI/HTTP header list) carries; an empty
    context (a new trace) when it carries none or a malformed one."""
    carrier: dict[str, str] = {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        key = name.decode("latin-1").lower() if isinstance(name, bytes) else name
        if key in TRACE_HEADERS:
            carrier[key] = value.decode("latin-1")
    return _propagator.extract(carrier) if carrier else Context()


def context_of(span: Span) -> Context:
    return trace.set_span_in_context(span)


def headers_of(span: Span) -> dict[str, bytes]:
    """``traceparent`` (and ``tracestate``) naming ``span`` as the parent."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context_of(span))
    return {name: value.encode() for name, value in carrier.items()}


def replace_trace_headers(headers: list[tuple[str, bytes]], span: Span) -> list[tuple[str, bytes]]:
    """``headers`` with their trace context, if any, replaced by ``span``'s."""
    kept = [(name, value) for name, value in headers if name not in TRACE_HEADERS]
    kept.extend(headers_of(span).items())
    return kept


# --- spans ------------------------------------------------------------------------------


def messaging_attributes(topic: str, operation: str) -> dict[str, str]:
    """OpenTelemetry semantic conventions for a Kafka record."""
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.type": operation,
    }


def start_producer(
    topic: str,
    parent: Context | None = None,
    attributes: Mapping[str, str | int] | None = None,
    operation: str = "publish",
) -> Span:
    """A span for records sent to ``topic``; its context goes into their headers."""
    attrs: dict[str, str | int] = {**messaging_attributes(topic, "send"), **(attributes or {})}
    return _tracer.start_span(
        f"{operation} {topic}", context=parent, kind=SpanKind.PRODUCER, attributes=attrs
    )


def start_consumer(
    operation: str,
    topic: str,
    headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]],
    attributes: Mapping[str, str | int] | None = None,
) -> Span:
    """A span for processing one record of ``topic``, child of the context it carries."""
    attrs: dict[str, str | int] = {**messaging_attributes(topic, "process"), **(attributes or {})}
    return _tracer.start_span(
        f"{operation} {topic}", context=extract(headers), kind=SpanKind.CONSUMER, attributes=attrs
    )


def activate(span: Span, *, end: bool = True) -> AbstractContextManager[Span]:
    """``span`` as the current one for a block; ended at its end unless ``end`` is False
    (an exception is recorded either way)."""
    return trace.use_span(span, end_on_exit=end)


def end(span: Span, error: BaseException | None = None) -> None:
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}"))
    span.end()


class SpanGroup:
    """Spans started one by one and ended together (a chunk of records published at once)."""

    __slots__ = ("_spans",)

    def __init__(self) -> None:
        self._spans: list[Span] = []

    def add(self, span: Span) -> Span:
        self._spans.append(span)
        return span

    def end(self, error: BaseException | None = None) -> None:
        for span in reversed(self._spans):
            end(span, error)
        self._spans.clear()
