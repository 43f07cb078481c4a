"""SSRF guard for outbound webhooks (design §9).

Three layers, each a plain function or a thin wrapper:

- ``classify_address``: pure. Says why an IP address must not be a webhook target
  (loopback, private, link-local incl. cloud metadata, CGNAT, multicast, reserved, …) or
  None when it is a public unicast address. IPv6 forms that carry an IPv4 address
  (IPv4-mapped, 6to4, NAT64) are judged by the address they carry.
- ``check_url``: pure. http/https only, a host is required, and a literal IP host is
  classified at once (an HTTP client connects to a literal without asking a resolver).
- ``GuardedResolver``: an aiohttp resolver that resolves a name once, refuses the whole
  answer if any address is blocked, and hands the checked addresses to the connector, so
  the connection goes to the vetted IP (no second lookup, no DNS rebinding window) while
  the Host header and TLS SNI stay the name.

Redirects are refused by the caller (``allow_redirects=False``): a redirect is a new,
unchecked target.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = frozenset({"http", "https"})


class UnsafeTargetError(Exception):
    """A target URL we refuse to send to. Final: retrying cannot make it safe.

    Deliberately not an ``OSError``: aiohttp would wrap an OSError from a resolver into
    a generic DNS error, and the reason would be lost.
    """


_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# Globally reachable assignments inside the blocked ranges below (IANA marks them
# "Globally Reachable: True"): anycast services and relays, never an internal host.
# Checked first, so the answer does not depend on the Python version's ``is_global``
# (3.11.7 calls 2001:1::1 non-global, 3.11.10 and 3.12.4+ global).
_GLOBAL_EXCEPTIONS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    _V4("192.0.0.9/32"),  # Port Control Protocol anycast
    _V4("192.0.0.10/32"),  # TURN anycast
    _V6("2001:1::1/128"),  # Port Control Protocol anycast
    _V6("2001:1::2/128"),  # TURN anycast
    _V6("2001:1::3/128"),  # DNS-SD service registration anycast
    _V6("2001:3::/32"),  # AMT
    _V6("2001:4:112::/48"),  # AS112-v6
    _V6("2001:20::/28"),  # ORCHIDv2
    _V6("2001:30::/28"),  # drone remote ID (DETs)
)

# (network, reason), checked in order. Sources: IANA IPv4/IPv6 Special-Purpose Address
# Registries (RFC 6890 and updates). ``is_global`` below is the backstop for anything
# newer that the stdlib knows and this table does not.
_BLOCKED_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_V4("0.0.0.0/8"), "unspecified ('this network') address"),
    (_V4("10.0.0.0/8"), "private address"),
    (_V4("100.64.0.0/10"), "carrier-grade NAT (shared) address"),
    (_V4("127.0.0.0/8"), "loopback address"),
    (_V4("169.254.0.0/16"), "link-local address (cloud metadata lives here)"),
    (_V4("172.16.0.0/12"), "private address"),
    (_V4("192.0.0.0/24"), "IETF protocol assignment"),
    (_V4("192.0.2.0/24"), "documentation address"),
    (_V4("192.88.99.0/24"), "6to4 relay anycast address"),
    (_V4("192.168.0.0/16"), "private address"),
    (_V4("198.18.0.0/15"), "benchmarking address"),
    (_V4("198.51.100.0/24"), "documentation address"),
    (_V4("203.0.113.0/24"), "documentation address"),
    (_V4("224.0.0.0/4"), "multicast address"),
    (_V4("255.255.255.255/32"), "broadcast address"),
    (_V4("240.0.0.0/4"), "reserved address"),
)

_BLOCKED_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_V6("::/128"), "unspecified address"),
    (_V6("::1/128"), "loopback address"),
    # Deprecated IPv4-compatible addresses (::a.b.c.d): nothing legitimate uses them.
    (_V6("::/96"), "IPv4-compatible (deprecated) address"),
    (_V6("64:ff9b:1::/48"), "local-use NAT64 address"),
    (_V6("100::/64"), "discard-only address"),
    # Teredo hides the client's IPv4 address obfuscated; refuse the whole range.
    (_V6("2001::/32"), "Teredo address"),
    (_V6("2001:2::/48"), "benchmarking address"),
    # The rest of the IETF protocol block (the global parts are exceptions above).
    (_V6("2001::/23"), "IETF protocol assignment"),
    (_V6("2001:db8::/32"), "documentation address"),
    (_V6("3fff::/20"), "documentation address"),
    # SRv6 segment identifiers (RFC 9602): not globally reachable, yet ipaddress in
    # Python ≤ 3.13 calls them global, so the backstop below would let them through.
    (_V6("5f00::/16"), "SRv6 segment identifier"),
    (_V6("fc00::/7"), "unique local (private) address"),
    (_V6("fe80::/10"), "link-local address"),
    (_V6("fec0::/10"), "site-local (deprecated) address"),
    (_V6("ff00::/8"), "multicast address"),
)

_MAPPED = _V6("::ffff:0:0/96")
_NAT64 = _V6("64:ff9b::/96")
_SIX_TO_FOUR = _V6("2002::/16")


def _embedded_v4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address carries (and how), if it carries one."""
    if ip in _MAPPED:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF), "IPv4-mapped"
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF), "NAT64"
    if ip in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFF_FFFF), "6to4"
    return None


def classify_address(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be a webhook target, or None when it is public unicast."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        ip = ipaddress.IPv6Address(ip.compressed.split("%", 1)[0])
    # A network of the other IP version never contains an address: one list serves both.
    if any(ip in net for net in _GLOBAL_EXCEPTIONS):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_v4(ip)
        if embedded is not None:
            v4, how = embedded
            reason = classify_address(v4)
            return f"{how} {reason}" if reason else None
        for net6, why in _BLOCKED_V6:
            if ip in net6:
                return f"{why} {ip}"
    else:
        for net4, why in _BLOCKED_V4:
            if ip in net4:
                return f"{why} {ip}"
    if not ip.is_global:
        return f"non-global address {ip}"
    return None


def parse_ip(host: str) -> IPAddress | None:
    """The address when ``host`` is an IP literal (brackets allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_url(url: URL | str, *, allow_private: bool = False) -> URL:
    """Refuse what is unsafe without a lookup: bad scheme, no host, a blocked literal IP.

    Hostnames are checked after resolution by ``GuardedResolver``.
    """
    parsed = url if isinstance(url, URL) else URL(url)
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise UnsafeTargetError(f"scheme {parsed.scheme!r} not allowed (http or https only)")
    host = parsed.raw_host
    if not host:
        raise UnsafeTargetError("target URL has no host")
    if not allow_private:
        ip = parse_ip(host)
        if ip is not None:
            reason = classify_address(ip)
            if reason:
                raise UnsafeTargetError(f"target {host} is a {reason}")
    return parsed


def check_addresses(host: str, addresses: Iterable[str]) -> None:
    """Raise when any resolved address of ``host`` is blocked (all or nothing)."""
    seen = False
    for address in addresses:
        seen = True
        ip = parse_ip(address)
        if ip is None:
            raise UnsafeTargetError(f"{host} resolved to a non-IP answer {address!r}")
        reason = classify_address(ip)
        if reason:
            raise UnsafeTargetError(f"{host} resolves to a {reason}")
    if not seen:
        raise UnsafeTargetError(f"{host} resolved to no address")


class GuardedResolver(AbstractResolver):
    """Resolve once with ``inner``, refuse blocked answers, return the vetted addresses.

    aiohttp connects to exactly the addresses a resolver returns, so what is checked is
    what is connected to. ``allow_private`` turns the check off (local development).
    """

    def __init__(self, inner: AbstractResolver, *, allow_private: bool = False) -> None:
        self._inner = inner
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self._allow_private:
            check_addresses(host, (r["host"] for r in results))
        return results

    async def close(self) -> None:
        await self._inner.close()
