"""A server span per HTTP request (design §12), installed only while tracing is on.

The span is a child of the request's W3C ``traceparent`` when it has one, so a
producer's trace goes on through Hookstream; with the default sampler
(``parentbased_always_on``) the producer's sampled flag is followed. Its context is the
current one while the request runs, so the publish span and the request's log lines
belong to it.

The span is named after the route template (``POST /ingest/{subscription_id}``), never
the path: paths carry ids, and some (portal links) carry tokens. Probes and metrics
scrapes are not traced: they would be most of the spans and say nothing.
"""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.ingest.ingest_endpoint import PATH_PREFIX
from shared import tracing

_UNTRACED = ("/health", "/ready", "/metrics", "/ui/static/")
_INGEST_ROUTE = PATH_PREFIX + "{subscription_id}"


class RequestTracing:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(_UNTRACED):
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        span = tracing.tracer().start_span(
            method,
            context=tracing.extract(scope["headers"]),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.scheme": scope["scheme"]},
        )
        status = 500  # unless the app answers

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            await self.app(scope, receive, send_status)
        except BaseException as exc:
            span.record_exception(exc)
            raise
        finally:
            otel_context.detach(token)
            route = _route(scope)
            if route is not None:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()


def _route(scope: Scope) -> str | None:
    """The matched route's template. The ingest fast path answers before routing."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    if scope["path"].startswith(PATH_PREFIX):
        return _INGEST_ROUTE
    return None
