"""Service processes started by tests resolve no target name off loopback
(``tests/support/offline/sitecustomize.py``): test data names targets like example.com,
and a DNS query for one would leave the machine."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from aiohttp import resolver as aiohttp_resolver

from tests.support import loopback_only
from tests.support.stack import ROOT, IsolatedStack

PROBE = """
import asyncio, json
from services.dispatcher import sender
from shared.settings import Settings
from yarl import URL

async def main():
    client = sender.make_client(Settings(allow_private_targets=True, delivery_timeout=5))
    out = {"resolver": type(client._resolver._inner).__name__}
    try:
        await client.post(URL("http://example.com/hook"), b"{}", {}, excerpt_bytes=0)
    except Exception as exc:
        out["example.com"] = str(exc)
    out["localhost"] = [r["host"] for r in await client._resolver.resolve("localhost", 80, 0)]
    await client.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_a_service_process_resolves_only_loopback_names(stack: IsolatedStack) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT, env=stack.process_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["resolver"] == "LoopbackOnlyResolver"
    assert out["example.com"].startswith("DNS lookup failed: example.com: not resolved")
    assert set(out["localhost"]) <= {"127.0.0.1", "::1"}


def test_the_test_process_resolves_only_loopback_names() -> None:
    # The guard is installed (tests/conftest.py); called directly, it refuses before any
    # lookup, so this test sends nothing even if the guard were missing.
    assert socket.getaddrinfo is loopback_only._guarded_getaddrinfo
    with pytest.raises(socket.gaierror, match="not resolved in a test run"):
        loopback_only._guarded_getaddrinfo("example.com", 443)
    assert aiohttp_resolver.DefaultResolver is loopback_only.LoopbackOnlyResolver


def test_only_localhost_and_numeric_addresses_are_resolved() -> None:
    for host in ("localhost", "LOCALHOST", b"localhost", "127.0.0.1", "::1", "10.0.0.1", None):
        assert loopback_only.allowed(host), host
    refused = ("example.com", "localhost.", "localhost.example.com", "metadata.internal", "")
    for host in refused:
        assert not loopback_only.allowed(host), host
