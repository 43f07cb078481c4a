"""The outbound HTTP client: one aiohttp session, a pooled connector, the SSRF guard.

aiohttp over httpx on the hot path: 6,481 vs 158 req/s at 100 concurrent on this class of
machine (design §11).
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp.resolver import DefaultResolver
from yarl import URL

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
