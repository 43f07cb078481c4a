"""What the HTTP client works out once per target URL (``http1.Endpoint``): the pool key,
the request line, and whether the host is an IP literal, which is then connected to
without a lookup and vetted by the SSRF guard once."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from services.dispatcher import http1
from shared.urlsafety import UnsafeTargetError


@pytest.mark.parametrize(
    ("url", "literal"),
    [
        ("http://127.0.0.1:8080/hook", "127.0.0.1"),
        ("https://[::1]:8443/hook", "::1"),
        ("http://203.0.113.7/hook", "203.0.113.7"),
        ("https://hooks.example.com/hook", None),
        ("http://localhost:8080/hook", None),
    ],
)
def test_an_ip_literal_is_parsed_once_a_name_is_not(url: str, literal: str | None) -> None:
    endpoint = http1.Endpoint.of(URL(url))
    expected = None if literal is None else ipaddress.ip_address(literal)
    assert endpoint.literal == expected


def test_the_request_line_and_pool_key() -> None:
    endpoint = http1.Endpoint.of(URL("http://[::1]:8080/a/b?c=1"))
    assert endpoint.key == ("http", "::1", 8080)
    assert endpoint.request_line == "POST /a/b?c=1 HTTP/1.1\r\nHost: [::1]:8080\r\n"


async def test_a_blocked_literal_is_refused_at_every_connection() -> None:
    # Its verdict is kept on the endpoint, not forgotten after the first refusal.
    client = http1.Http1Client(resolver=_NoLookups(), allow_private=False, timeout=1.0)
    endpoint = client.endpoint(URL("http://10.1.2.3:8080/hook"))
    try:
        for _ in range(2):
            with pytest.raises(UnsafeTargetError, match="private"):
                await client._addresses_of(endpoint)
        # A public literal passes, with no lookup (and no connection: none is made here).
        assert await _allowed(client, "http://93.184.216.34/hook") == ["93.184.216.34"]
    finally:
        await client.close()


async def _allowed(client: http1.Http1Client, url: str) -> list[str]:
    return await client._addresses_of(client.endpoint(URL(url)))


class _NoLookups(AbstractResolver):
    """A resolver that fails the test if asked: literals need none."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        raise AssertionError(f"looked up {host}")

    async def close(self) -> None:
        return None
