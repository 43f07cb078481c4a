"""The SSRF guard as pure functions, and the resolver wrapper with a stub resolver.

No packet leaves the machine: addresses are classified, names are "resolved" by a stub.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from shared.urlsafety import (
    GuardedResolver,
    UnsafeTargetError,
    check_addresses,
    check_url,
    classify_address,
)

BLOCKED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("169.254.0.1", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.255", "carrier-grade NAT"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("192.0.2.10", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("192.0.0.170", "IETF protocol"),
    ("192.0.0.8", "IETF protocol"),  # next to the global 192.0.0.9 and .10
    ("192.0.0.11", "IETF protocol"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fc00::1", "unique local"),
    ("fd12:3456::1", "unique local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("2001:2::1", "benchmarking"),
    ("2001:1::4", "IETF protocol"),  # next to the global 2001:1::1-3
    ("2001:10::1", "IETF protocol"),  # deprecated ORCHID
    ("100::1", "discard-only"),
    ("5f00::1", "SRv6"),
    ("::127.0.0.1", "IPv4-compatible"),
    # IPv6 forms that carry a blocked IPv4 address
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:169.254.169.254", "IPv4-mapped link-local"),
    ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("64:ff9b::7f00:1", "NAT64 loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 link-local"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("2002:7f00:1::1", "6to4 loopback"),
    ("2002:a9fe:a9fe::", "6to4 link-local"),
    ("2002:c0a8:0101::1", "6to4 private"),
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above CGNAT
    "172.15.255.255",
    "172.32.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "2606:4700:4700::1111",
    "2a00:1450:4001:81b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:0808:0808::1",
    # Globally reachable special-purpose addresses (IANA), whatever ipaddress says:
    "192.0.0.9",
    "192.0.0.10",
    "2001:1::1",
    "2001:1::2",
    "2001:1::3",
    "2001:3::1",
    "2001:4:112::1",
    "2001:20::1",
    "2001:30::1",
]


@pytest.mark.parametrize(("address", "why"), BLOCKED)
def test_blocked_addresses_are_refused_with_a_reason(address: str, why: str) -> None:
    reason = classify_address(ipaddress.ip_address(address))
    assert reason is not None
    assert why in reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_unicast_addresses_pass(address: str) -> None:
    assert classify_address(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "gopher://example.com/",
        "javascript:alert(1)",
        "http:///nohost",
    ],
)
def test_only_http_and_https_with_a_host(url: str) -> None:
    with pytest.raises(UnsafeTargetError):
        check_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://[::1]/hook",
        "https://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://10.0.0.1/",
        "http://0.0.0.0:80/",
    ],
)
def test_literal_ip_targets_are_refused_before_any_connection(url: str) -> None:
    with pytest.raises(UnsafeTargetError):
        check_url(url)


def test_literal_ip_allowed_when_private_targets_are_allowed() -> None:
    assert check_url("http://127.0.0.1:8080/hook", allow_private=True).port == 8080


def test_names_and_public_literals_pass_the_url_check() -> None:
    assert check_url("https://hooks.example.com/in").host == "hooks.example.com"
    assert check_url("http://8.8.8.8/").host == "8.8.8.8"


def test_every_resolved_address_is_checked() -> None:
    check_addresses("ok.example", ["8.8.8.8", "2606:4700:4700::1111"])
    with pytest.raises(UnsafeTargetError, match="loopback"):
        # One bad answer among good ones refuses the name (DNS rebinding style).
        check_addresses("mixed.example", ["8.8.8.8", "127.0.0.1"])
    with pytest.raises(UnsafeTargetError, match="no address"):
        check_addresses("empty.example", [])


class StubResolver(AbstractResolver):
    """Answers from a table; records what it was asked. Never touches the network."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.table[host]
        ]

    async def close(self) -> None:
        pass


async def test_guarded_resolver_returns_exactly_the_checked_addresses() -> None:
    stub = StubResolver({"hooks.example.com": ["93.184.215.14", "2606:4700::1"]})
    resolver = GuardedResolver(stub)
    results = await resolver.resolve("hooks.example.com", 443)
    assert [r["host"] for r in results] == ["93.184.215.14", "2606:4700::1"]
    assert all(r["hostname"] == "hooks.example.com" for r in results)
    assert stub.asked == ["hooks.example.com"]  # resolved once


@pytest.mark.parametrize(
    ("name", "answer", "why"),
    [
        ("localhost", ["127.0.0.1", "::1"], "loopback"),
        ("metadata.internal", ["169.254.169.254"], "link-local"),
        ("rebind.example", ["93.184.215.14", "10.0.0.5"], "private"),
        ("mapped.example", ["::ffff:192.168.0.1"], "IPv4-mapped private"),
        ("cgnat.example", ["100.100.100.100"], "carrier-grade NAT"),
    ],
)
async def test_guarded_resolver_refuses_names_that_resolve_to_blocked_addresses(
    name: str, answer: list[str], why: str
) -> None:
    resolver = GuardedResolver(StubResolver({name: answer}))
    with pytest.raises(UnsafeTargetError, match=why):
        await resolver.resolve(name, 80)


async def test_guarded_resolver_allows_private_when_told() -> None:
    resolver = GuardedResolver(StubResolver({"localhost": ["127.0.0.1"]}), allow_private=True)
    assert [r["host"] for r in await resolver.resolve("localhost", 80)] == ["127.0.0.1"]
