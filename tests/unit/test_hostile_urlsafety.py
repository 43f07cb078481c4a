"""The SSRF guard against every special-purpose range, edge to edge, in every disguise.

tests/unit/test_urlsafety.py checks one or two addresses per reason. Here the ranges come
from an independent table (the IANA IPv4 and IPv6 Special-Purpose Address Registries,
the entries that are not globally reachable, plus multicast and the old site-local
range): the first and last address of each must be refused as a literal URL, when a
name resolves to it, and carried inside IPv4-mapped, NAT64 and 6to4 addresses; the
addresses just outside each IPv4 range must pass. Alternative IPv4 spellings
(``2130706433``, ``0x7f.0.0.1``, ``127.1``) are not literals to ``check_url`` but the
system resolver turns them into 127.0.0.1, and the guarded resolver then refuses them.

No packet leaves the machine: stub resolvers, and numeric strings that getaddrinfo
parses without asking DNS.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from shared.urlsafety import (
    GuardedResolver,
    UnsafeTargetError,
    check_addresses,
    check_url,
    classify_address,
)

BLOCKED_V4 = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",  # with 255.255.255.255 at its end
]

# The public neighbours of the ranges above: refusing them would be a bug too.
PUBLIC_V4 = [
    "1.0.0.0",
    "9.255.255.255",
    "11.0.0.0",
    "100.63.255.255",
    "100.128.0.0",
    "126.255.255.255",
    "128.0.0.0",
    "169.253.255.255",
    "169.255.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.0.1.255",
    "192.0.3.0",
    "192.88.98.255",
    "192.88.100.0",
    "192.167.255.255",
    "192.169.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "198.51.99.255",
    "198.51.101.0",
    "203.0.112.255",
    "203.0.114.0",
    "223.255.255.255",
]

BLOCKED_V6 = [
    "::/128",
    "::1/128",
    "::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001::/23",  # IETF protocol assignments: Teredo, benchmarking, ORCHID, ...
    "2001:db8::/32",
    "3fff::/20",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
    "5f00::/16",  # SRv6 SIDs (RFC 9602)
]


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _edges(network: str) -> list[IPAddress]:
    net = ipaddress.ip_network(network)
    first, last = net[0], net[-1]
    assert isinstance(first, IPAddress)
    assert isinstance(last, IPAddress)
    return [first, last]


def _disguises(v4: ipaddress.IPv4Address) -> list[ipaddress.IPv6Address]:
    """IPv6 addresses that carry ``v4``: IPv4-mapped, NAT64 (64:ff9b::/96), 6to4."""
    return [
        ipaddress.IPv6Address(f"::ffff:{v4}"),
        ipaddress.IPv6Address(f"64:ff9b::{v4}"),
        ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80) | 1),
    ]


def _url(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{host}:8080/hook"


class StubResolver(AbstractResolver):
    """Answers every name with fixed addresses; no network."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("network", BLOCKED_V4)
async def test_every_blocked_ipv4_range_is_refused_edge_to_edge_and_in_disguise(
    network: str,
) -> None:
    for v4 in _edges(network):
        assert isinstance(v4, ipaddress.IPv4Address)
        forms: list[IPAddress] = [v4, *_disguises(v4)]
        for address in forms:
            assert classify_address(address) is not None, address
            with pytest.raises(UnsafeTargetError):
                check_url(_url(address))
            with pytest.raises(UnsafeTargetError):
                await GuardedResolver(StubResolver(str(address))).resolve("hooks.example", 443)
        # Allowed for local development, whatever the range.
        assert check_url(_url(v4), allow_private=True).host == str(v4)


@pytest.mark.parametrize("address", PUBLIC_V4)
def test_the_public_neighbours_of_every_range_pass(address: str) -> None:
    v4 = ipaddress.IPv4Address(address)
    forms: list[IPAddress] = [v4, *_disguises(v4)]
    for form in forms:
        assert classify_address(form) is None, form
    check_url(_url(v4))
    check_addresses("hooks.example", [address, str(_disguises(v4)[0])])


@pytest.mark.parametrize("network", BLOCKED_V6)
async def test_every_blocked_ipv6_range_is_refused_edge_to_edge(network: str) -> None:
    for address in _edges(network):
        assert classify_address(address) is not None, address
        with pytest.raises(UnsafeTargetError):
            check_url(_url(address))
        with pytest.raises(UnsafeTargetError):
            await GuardedResolver(StubResolver(str(address))).resolve("hooks.example", 443)


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f000001", "0x7f.0.0.1", "0177.0.0.1", "017700000001", "127.1"],
)
async def test_other_spellings_of_loopback_are_refused_once_resolved(host: str) -> None:
    # Not an IP literal to the URL check (ipaddress refuses these spellings) ...
    assert check_url(f"http://{host}:8080/").raw_host == host
    # ... but getaddrinfo reads them as 127.0.0.1 (inet_aton), and the guard sees that.
    with pytest.raises(UnsafeTargetError, match="loopback"):
        await GuardedResolver(ThreadedResolver()).resolve(host, 8080)


@pytest.mark.parametrize(
    "url",
    [
        "http://①②⑦.0.0.1/",  # IDNA folds these digits to 127.0.0.1
        "http://127。0。0。1/",  # ideographic full stops
        "http://[0:0:0:0:0:ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[fe80::1%25eth0]/",
        "HTTP://[::1]/",
    ],
)
def test_unicode_and_long_forms_of_blocked_literals_are_refused(url: str) -> None:
    with pytest.raises(UnsafeTargetError):
        check_url(url)


async def test_a_name_with_one_blocked_answer_among_many_is_refused_whole() -> None:
    answers = ["93.184.215.14", "2606:4700::1", "8.8.4.4", "::ffff:10.1.2.3"]
    with pytest.raises(UnsafeTargetError, match="IPv4-mapped private"):
        await GuardedResolver(StubResolver(*answers)).resolve("rebind.example", 443)
