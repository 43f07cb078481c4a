"""Loaded first by every service process a test or a benchmark starts
(``IsolatedStack.process_env`` puts this directory on ``PYTHONPATH``): the dispatcher
resolves no target name but ``localhost`` and numeric addresses.

Why: test data names targets such as ``example.com`` (the API tests, schemathesis), and a
dispatcher started later on the same stack consumes their jobs. Resolving those names
sends a DNS query to the machine's resolver, a packet off loopback, which no test may
send. Refused here, a lookup fails at once as "DNS lookup failed" (a retryable attempt),
as it would for a name that does not exist.
"""

from __future__ import annotations

import socket

from aiohttp import resolver
from aiohttp.abc import ResolveResult


def _numeric(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except OSError:
        return False
    return True


class LoopbackOnlyResolver(resolver.ThreadedResolver):
    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != "localhost" and not _numeric(host):
            raise OSError(socket.EAI_NONAME, f"not resolved in a test run (loopback only): {host}")
        return await super().resolve(host, port, family)


resolver.DefaultResolver = LoopbackOnlyResolver  # type: ignore[misc]
