"""The outbound HTTP client: one aiohttp session, a pooled connector, the SSRF guard.

aiohttp over httpx on the hot path: 6,481 vs 158 req/s at 100 concurrent on this class of
machine (design §11).
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp.resolver import DefaultResolver
from opentelemetry.trace import SpanKind, Status, StatusCode
from yarl import URL

from shared import tracing
from shared.settings import Settings
from shared.urlsafety import GuardedResolver


def make_session(settings: Settings) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=settings.max_in_flight,
        limit_per_host=settings.max_in_flight_per_target,
        resolver=GuardedResolver(DefaultResolver(), allow_private=settings.allow_private_targets),
        # Answers are vetted before they are cached, so caching them is safe; 60 s
        # saves a lookup per connection to busy targets.
        ttl_dns_cache=60,
        keepalive_timeout=30,
        enable_cleanup_closed=True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=settings.delivery_timeout),
        # Targets share one session: a cookie set by one must never reach another.
        cookie_jar=aiohttp.DummyCookieJar(),
        # Never pick up HTTP(S)_PROXY: the guard vets the target, not a proxy.
        trust_env=False,
        raise_for_status=False,
    )


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    retry_after: str | None
    excerpt: str | None


async def post(
    session: aiohttp.ClientSession,
    url: URL,
    body: bytes,
    headers: dict[str, str],
    *,
    excerpt_bytes: int,
) -> Response:
    """POST ``body`` as is; read at most ``excerpt_bytes`` of the answer. No redirects."""
    async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
        excerpt: str | None = None
        if excerpt_bytes:
            chunks: list[bytes] = []
            size = 0
            content = resp.content
            while size < excerpt_bytes:
                chunk = await content.read(excerpt_bytes - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if content.at_eof():
                    break
            excerpt = b"".join(chunks).decode("utf-8", "replace") if chunks else ""
        return Response(resp.status, resp.headers.get("Retry-After"), excerpt)


async def post_traced(
    session: aiohttp.ClientSession,
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
        response = await post(session, url, body, traced, excerpt_bytes=excerpt_bytes)
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
