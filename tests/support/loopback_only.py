"""No name but ``localhost`` is resolved where tests run: neither in pytest's own process
(``tests/conftest.py``) nor in the service processes tests and benchmarks start
(``offline/sitecustomize.py``).

Test data names targets such as ``example.com`` (the API tests, schemathesis). Resolving
one sends a DNS query to the machine's resolver, a packet off loopback, which no test may
send. Refused here, a lookup fails at once as a name that does not exist would
(``EAI_NONAME``), so the code under test takes its "DNS lookup failed" path. Two doors are
closed: ``socket.getaddrinfo`` (asyncio's default loop and every blocking client), and
aiohttp's default resolver (the dispatcher's, which on uvloop resolves in C, past
``socket.getaddrinfo``).
"""

from __future__ import annotations

import socket
from typing import Any

from aiohttp import resolver
from aiohttp.abc import ResolveResult

_getaddrinfo = socket.getaddrinfo


def allowed(host: str | bytes | None) -> bool:
    """``localhost``, a numeric address, or no host at all (a wildcard bind)."""
    if host is None:
        return True
    name = host.decode() if isinstance(host, bytes) else host
    if name.lower() == "localhost":
        return True
    try:
        _getaddrinfo(name, None, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return False
    return True


def refused(host: str | bytes) -> socket.gaierror:
    return socket.gaierror(
        socket.EAI_NONAME, f"not resolved in a test run (loopback only): {host!r}"
    )


def _guarded_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
    if not allowed(host):
        raise refused(host)
    return _getaddrinfo(host, port, *args, **kwargs)


class LoopbackOnlyResolver(resolver.ThreadedResolver):
    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if not allowed(host):
            raise refused(host)
        return await super().resolve(host, port, family)


def install() -> None:
    """Close both doors in this process (idempotent)."""
    socket.getaddrinfo = _guarded_getaddrinfo
    resolver.DefaultResolver = LoopbackOnlyResolver  # type: ignore[misc]
