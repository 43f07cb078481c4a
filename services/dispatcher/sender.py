"""The outbound HTTP client as the delivery stage uses it: built from settings, with the
SSRF guard, and the answer as the stage records it.

The client itself is ``http1.py`` (why not aiohttp: its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp.resolver import DefaultResolver
from opentelemetry.trace import SpanKind, Status, StatusCode
from yarl import URL

from services.dispatcher.http1 import Http1Client
from shared import tracing
from shared.settings import Settings
from shared.urlsafety import GuardedResolver


def make_client(settings: Settings) -> Http1Client:
    return Http1Client(
        GuardedResolver(DefaultResolver(), allow_private=settings.allow_private_targets),
        allow_private=settings.allow_private_targets,
        timeout=settings.delivery_timeout,
    )


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    retry_after: str | None
    excerpt: str | None


async def post(
    client: Http1Client,
    url: URL,
    body: bytes,
    headers: dict[str, str],
    *,
    excerpt_bytes: int,
) -> Response:
    """POST ``body`` as is; read at most ``excerpt_bytes`` of the answer. No redirects."""
    answer = await client.post(url, body, headers, excerpt_bytes=excerpt_bytes)
    excerpt = None if answer.excerpt is None else answer.excerpt.decode("utf-8", "replace")
    return Response(answer.status, answer.retry_after, excerpt)


async def post_traced(
    client: Http1Client,
    url: URL,
    body: bytes,
    headers: dict[str, str],
    *,
    excerpt_bytes: int,
) -> Response:
    """``post`` inside an HTTP client span (design §12), whose ``traceparent`` the target
    receives. The span names the target's host and port, never its URL: a webhook URL's
    path or query often carries a token."""
    span = tracing.tracer().start_span(
        "POST",
        kind=SpanKind.CLIENT,
        attributes={
            "http.request.method": "POST",
            "server.address": url.host or "",
            "server.port": url.port or 0,
            "url.scheme": url.scheme,
        },
    )
    traced = headers | {name: value.decode() for name, value in tracing.headers_of(span).items()}
    try:
        response = await post(client, url, body, traced, excerpt_bytes=excerpt_bytes)
    except BaseException as exc:
        span.set_attribute("error.type", type(exc).__name__)
        tracing.end(span, exc)
        raise
    span.set_attribute("http.response.status_code", response.status)
    if response.status >= 400:
        # A client span's 4xx is an error too (semantic conventions): the target refused.
        span.set_attribute("error.type", str(response.status))
        span.set_status(Status(StatusCode.ERROR))
    span.end()
    return response
