"""The outbound HTTP/1.1 client: keep-alive connections as ``asyncio.Protocol`` objects.

Why not aiohttp (which served deliveries until 2026-12-05): against 1,000 loopback
targets (``python -m bench.client_floor``) its client spent 91-98 µs of CPU per request
when they answered at once and 123-141 µs when they answered in ~150 ms: most of the
dispatcher's cost per delivery. A delivery needs little of a general client: one POST of
bytes already in hand, the status, ``Retry-After`` and a bounded excerpt of the answer.
This client does that as a request written in one call and an answer parsed by
``httptools`` (llhttp, the parser of Node.js and uvicorn): 27-30 µs instant, 39-42 µs
slow on the same farm. The dispatcher's CPU per delivery fell from 108 to 68 µs
(``bench delivery``); against 1,000 targets (``bench targets``) from 216-239 to 106-117 µs
when they answer at once and from 287-289 to 168-196 µs when they answer in ~150 ms.

What it keeps of the old session, deliberately:

- SSRF guard at connect: a name is resolved once by ``GuardedResolver`` (the whole answer
  refused if any address is blocked) and the connection goes to a vetted address, never
  to a second lookup; a literal IP is classified before connecting. Names and addresses
  are cached for ``DNS_TTL`` seconds, only once vetted.
- No redirects (a 3xx is an answer like any other), no proxy from the environment, no
  cookies, no ``Accept-Encoding`` (an excerpt of a compressed answer would be noise).
- One total timeout per attempt, from the first connection attempt to the answer's last
  needed byte.
- Bounded reads: an answer's head may not exceed ``MAX_HEAD`` bytes; of its body, only
  ``excerpt_bytes`` are read, after which a connection still carrying body is closed
  rather than drained.

A connection carries one request at a time (HTTP/1.1 without pipelining) and goes back to
its target's idle list once its answer is complete and keep-alive. The dispatcher's own
bounds (``limits.py``) cap requests in flight per target and overall, so open
connections never exceed its in-flight requests plus idle ones; idle ones are closed
after ``IDLE_S`` (servers close theirs too: a reused connection the server closed before
reading the request is retried once on a new one, which can send a webhook twice, as
any retry can: receivers deduplicate by ``webhook-id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, cast

import httptools
from aiohttp.abc import AbstractResolver
from yarl import URL

from shared.loopref import LoopRef
from shared.singleflight import SingleFlight
from shared.urlsafety import (
    IPAddress,
    UnsafeTargetError,
    check_addresses,
    classify_address,
    parse_ip,
)

# Servers close idle keep-alive connections after 5 s (Node.js, uvicorn) to 75 s (nginx);
# a reused connection closed meanwhile is retried on a new one, so this only bounds how
# many idle sockets a quiet target keeps.
IDLE_S = 30.0
DNS_TTL = 60.0
# An answer's status line and headers together; llhttp has no limit of its own.
MAX_HEAD = 64 * 1024
_SWEEP_S = 10.0


class SendError(Exception):
    """A request that got no usable answer. ``str()`` is the attempt row's error text."""

    retryable = True


class InvalidRequest(SendError):
    """The request cannot be written (a header with a line break): final."""

    retryable = False


class DnsFailed(SendError):
    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"DNS lookup failed: {host}: {reason}")


class ConnectFailed(SendError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"connection failed: {reason}")


class CertificateFailed(SendError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"TLS certificate error: {reason}")


class Disconnected(SendError):
    """The connection closed before the answer's head was complete."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"server disconnected{f' ({detail})' if detail else ''}")


class BadAnswer(SendError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid HTTP answer: {reason}")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    retry_after: str | None
    # None when no excerpt was asked for.
    excerpt: bytes | None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What a URL means to the client, worked out once per URL."""

    key: tuple[str, str, int]  # (scheme, host, port): the unit connections are pooled by
    host: str  # as in the URL, IDNA-encoded; IPv6 without brackets
    port: int
    tls: bool
    # "POST <path?query> HTTP/1.1\r\nHost: <host[:port]>\r\n"
    request_line: str
    # The address when the host is an IP literal, and why the SSRF guard refuses it
    # (None: public): worked out here once, not at every connection (parsing took
    # 1.8-2.8 µs, a name raising ValueError; testing every blocked network 4-5 µs).
    literal: IPAddress | None
    refusal: str | None

    @classmethod
    def of(cls, url: URL) -> Endpoint:
        host = url.raw_host
        if not host or url.scheme not in ("http", "https"):
            raise InvalidRequest(f"not an http(s) URL with a host: {url.scheme}://{host or ''}")
        port = url.port or (443 if url.scheme == "https" else 80)
        tls = url.scheme == "https"
        shown = f"[{host}]" if ":" in host else host
        if port != (443 if tls else 80):
            shown = f"{shown}:{port}"
        line = f"POST {url.raw_path_qs or '/'} HTTP/1.1\r\nHost: {shown}\r\n"
        if line.count("\n") != 2 or line.count("\r") != 2 or "\0" in line:
            raise InvalidRequest("a line break or NUL in the target URL")
        literal = parse_ip(host)
        refusal = None if literal is None else classify_address(literal)
        return cls((url.scheme, host, port), host, port, tls, line, literal, refusal)


def request_head(endpoint: Endpoint, headers: dict[str, str], length: int) -> bytes:
    """The request's head; refuses a header that would break a line (header injection)."""
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    count = len(headers)
    if fields.count("\n") != count or fields.count("\r") != count or "\0" in fields:
        raise InvalidRequest("a header name or value holds a line break or NUL")
    return f"{endpoint.request_line}{fields}Content-Length: {length}\r\n\r\n".encode(
        "utf-8", "surrogateescape"
    )


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``answer`` resolves with its current request's answer."""

    __slots__ = (
        "_excerpt",
        "_head_bytes",
        "_headers_done",
        "_limit",
        "_parser",
        "_retry_after",
        "_size",
        "_status",
        "answer",
        "got_bytes",
        "home",
        "idle_since",
        "key",
        "reusable",
        "transport",
    )

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        # Its target's idle list while it waits there between requests, else None.
        self.home: list[_Connection] | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[Answer] | None = None
        self.idle_since = 0.0
        self.reusable = False
        self.got_bytes = False
        self._reset(0)

    def _reset(self, limit: int) -> None:
        self._limit = limit
        self._excerpt: list[bytes] = []
        self._size = 0
        self._status = 0
        self._retry_after: str | None = None
        self._headers_done = False
        self._head_bytes = 0

    # --- the client's side ------------------------------------------------------

    def send(self, data: bytes, answer: asyncio.Future[Answer], excerpt_bytes: int) -> None:
        assert self.transport is not None
        self._reset(excerpt_bytes)
        self.answer = answer
        self.reusable = False
        self.got_bytes = False
        self.transport.write(data)

    def abort(self) -> None:
        """Drop the connection under an unfinished request (timeout, cancellation)."""
        self.answer = None
        if self.transport is not None:
            self.transport.abort()

    # --- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport; they behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.answer is None:
            # Bytes nobody asked for (between requests): the stream is no longer in step.
            self._close()
            return
        self.got_bytes = True
        if not self._headers_done:
            self._head_bytes += len(data)  # and maybe some body: checked once parsed
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadAnswer("the target switched protocols"))
            return
        except httptools.HttpParserError as exc:
            self._fail(BadAnswer(str(exc) or type(exc).__name__))
            return
        if not self._headers_done and self._head_bytes > MAX_HEAD:
            # A read is at most 256 KiB, so a head is never held much past the limit.
            self._fail(BadAnswer(f"status line and headers over {MAX_HEAD} bytes"))
        elif self.answer is not None and self._headers_done and self._size >= self._limit:
            # Head read and as much body as wanted, the rest still coming: answer now and
            # close rather than drain a body of any length.
            self._finish(reuse=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        # The parser holds our callbacks and we hold it: a cycle, left to the garbage
        # collector, for every connection closed (one per hung request). Nothing is
        # parsed past this point.
        del self._parser
        if self.home is not None and self in self.home:
            self.home.remove(self)
        if self.answer is None:
            return
        if self._headers_done:
            # An answer read to its close (no length given), or cut short: its status
            # stands either way.
            self._finish(reuse=False)
        else:
            self._fail(Disconnected(str(exc) if exc else ""), close=False)

    # --- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        if self.answer is None:
            # An answer to no request (after the one it was sent for, in the same read):
            # the stream is no longer in step.
            self.reusable = False
            self._close()

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 11 and name.lower() == b"retry-after":
            self._retry_after = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            return  # informational (100 Continue, 103 Early Hints): the answer follows
        self._status = status
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        room = self._limit - self._size
        if room > 0:
            self._excerpt.append(body[:room])
            self._size += min(room, len(body))

    def on_message_complete(self) -> None:
        if self._headers_done and self.answer is not None:
            self._finish(reuse=self._parser.should_keep_alive())

    # --- endings ----------------------------------------------------------------

    def _finish(self, *, reuse: bool) -> None:
        answer, self.answer = self.answer, None
        excerpt = b"".join(self._excerpt) if self._limit else None
        if answer is not None and not answer.done():
            answer.set_result(Answer(self._status, self._retry_after, excerpt))
        self.reusable = reuse
        if not reuse:
            self._close()

    def _fail(self, error: SendError, *, close: bool = True) -> None:
        answer, self.answer = self.answer, None
        if answer is not None and not answer.done():
            answer.set_exception(error)
        if close:
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _timed_out(answer: asyncio.Future[Answer]) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError())


class _Deadlines:
    """Times out answers at their deadlines with one loop timer, not one per request.

    A timer per request (``loop.call_at``, cancelled at the answer) is a handle allocated,
    pushed onto the loop's timer heap, taken off it again and closed on a later turn of
    the loop, and that heap holds every open request. With 2,000 requests open the bare
    client spent 115 µs of CPU per request against slow targets and 94 µs against instant
    ones that way; with one timer, 107 and 77 µs (medians of 8 alternated runs each of
    ``python -m bench.client_floor hookstream slow`` and ``wide``). Every request of a
    client has the same timeout, so requests are due in the order they were sent: each is
    an entry of an insertion-ordered dict (answer → deadline), and one timer waits for
    the first. A request that ended is forgotten: its entry goes at once.

    Not a queue of entries dropped from its head: behind a request that hangs, the entries
    of every request answered since stayed in it for a whole timeout (with 1 % of requests
    hanging, every request of the last 10 s), a list and a float each, all of them cold by
    the time they went.

    A request sent after later ones had been (it waited for a new connection meanwhile)
    is out of that order: it gets a timer of its own, or it would wait behind a deadline
    later than its own."""

    __slots__ = ("_due", "_last", "_timer")

    def __init__(self) -> None:
        self._due: dict[asyncio.Future[Answer], float] = {}  # in deadline order
        self._last = 0.0  # the latest deadline entered
        self._timer: asyncio.TimerHandle | None = None

    def watch(
        self, loop: asyncio.AbstractEventLoop, deadline: float, answer: asyncio.Future[Answer]
    ) -> asyncio.Future[Answer] | asyncio.TimerHandle:
        """Fail ``answer`` at ``deadline``, unless what this returns is given to ``forget``
        first (when the request ends, however it ends)."""
        if deadline < self._last:
            return loop.call_at(deadline, _timed_out, answer)
        self._last = deadline
        self._due[answer] = deadline
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire, loop)
        return answer

    def forget(self, watched: asyncio.Future[Answer] | asyncio.TimerHandle) -> None:
        if isinstance(watched, asyncio.Future):
            self._due.pop(watched, None)
        else:
            watched.cancel()

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now, due = loop.time(), self._due
        expired = []
        for answer, deadline in due.items():
            if deadline > now:
                self._timer = loop.call_at(deadline, self._expire, loop)
                break
            expired.append(answer)
        for answer in expired:
            del due[answer]
            _timed_out(answer)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()


class Http1Client:
    """POST bytes to webhook targets over pooled HTTP/1.1 connections, SSRF-guarded.

    ``ssl_context`` is the system's default trust store unless given (tests pass one that
    trusts their own certificate authority).
    """

    def __init__(
        self,
        resolver: AbstractResolver,
        *,
        allow_private: bool,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._resolver = resolver
        self._allow_private = allow_private
        self._timeout = timeout
        self._ssl = ssl_context or ssl.create_default_context()
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._deadlines = _Deadlines()
        self._endpoints: dict[URL, Endpoint] = {}
        self._addresses: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._lookups: SingleFlight[tuple[str, int], list[str]] = SingleFlight()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self._loop = LoopRef()

    def endpoint(self, url: URL) -> Endpoint:
        found = self._endpoints.get(url)
        if found is None:
            found = Endpoint.of(url)
            if len(self._endpoints) >= 10_000:
                self._endpoints.clear()
            self._endpoints[url] = found
        return found

    async def post(
        self, url: URL, body: bytes, headers: dict[str, str], *, excerpt_bytes: int
    ) -> Answer:
        """POST ``body`` to ``url``; the answer's status, ``Retry-After`` and at most
        ``excerpt_bytes`` of its body. Raises ``SendError``, ``UnsafeTargetError`` or
        ``TimeoutError``."""
        if self._closed:
            raise RuntimeError("the HTTP client is closed")
        loop = self._loop()
        deadline = loop.time() + self._timeout
        endpoint = self.endpoint(url)
        data = request_head(endpoint, headers, len(body)) + body
        conn = self._checkout(endpoint)
        if conn is not None:
            try:
                return await self._exchange(loop, conn, data, excerpt_bytes, deadline)
            except Disconnected:
                if conn.got_bytes:
                    raise
                # Closed by the server while idle, before it read the request: once more
                # on a new connection (see the module's docstring).
        conn = await self._connect(loop, endpoint, deadline)
        return await self._exchange(loop, conn, data, excerpt_bytes, deadline)

    async def _exchange(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: _Connection,
        data: bytes,
        excerpt_bytes: int,
        deadline: float,
    ) -> Answer:
        answer: asyncio.Future[Answer] = loop.create_future()
        watched = self._deadlines.watch(loop, deadline, answer)
        self._busy.add(conn)
        try:
            conn.send(data, answer, excerpt_bytes)
            result = await answer
        except BaseException:
            conn.abort()  # timed out, cancelled or failed: the stream is out of step
            raise
        finally:
            self._deadlines.forget(watched)
            self._busy.discard(conn)
        self._checkin(conn)
        return result

    # --- the pool ---------------------------------------------------------------

    def _checkout(self, endpoint: Endpoint) -> _Connection | None:
        idle = self._idle.get(endpoint.key)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be closed
            conn.home = None
            transport = conn.transport
            if (
                transport is not None
                and not transport.is_closing()
                and now - conn.idle_since < IDLE_S
            ):
                return conn
            conn.abort()
        return None

    def _checkin(self, conn: _Connection) -> None:
        if not conn.reusable or conn.transport is None or self._closed:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        home = self._idle.get(conn.key)
        if home is None:  # its list was swept away while it was busy
            home = self._idle[conn.key] = []
        conn.home = home
        home.append(conn)
        if self._sweeper is None:
            self._sweeper = self._loop().call_later(_SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle past ``IDLE_S``: the oldest sit at the bottom."""
        self._sweeper = None
        limit = time.monotonic() - IDLE_S
        for key, idle in list(self._idle.items()):
            while idle and idle[0].idle_since < limit:
                idle.pop(0).abort()
            if not idle:
                del self._idle[key]
        if self._idle and not self._closed:
            self._sweeper = self._loop().call_later(_SWEEP_S, self._sweep)

    def open_connections(self) -> int:
        return len(self._busy) + sum(len(idle) for idle in self._idle.values())

    # --- connecting -------------------------------------------------------------

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, endpoint: Endpoint, deadline: float
    ) -> _Connection:
        key = endpoint.key
        async with asyncio.timeout_at(deadline):
            addresses = await self._addresses_of(endpoint)
            failure: Exception | None = None
            for n, address in enumerate(addresses, 1):
                # Every address but the last gets half of what is left: an address that
                # swallows SYNs (a broken IPv6 route) must not eat the whole timeout.
                last = n == len(addresses)
                share = (deadline - loop.time()) / 2
                # The last address has the rest of the deadline, the outer timeout's; no
                # second timer for it (a name with one address, or an IP literal).
                limit = contextlib.nullcontext() if last else asyncio.timeout(share)
                try:
                    async with limit:
                        _, conn = await open_connection(
                            loop,
                            lambda: _Connection(key),
                            address,
                            endpoint.port,
                            ssl=self._ssl if endpoint.tls else None,
                            server_hostname=endpoint.host if endpoint.tls else None,
                        )
                    return conn
                except ssl.SSLCertVerificationError as exc:
                    raise CertificateFailed(exc.verify_message or str(exc)) from exc
                except TimeoutError:
                    if last:
                        raise
                    failure = ConnectFailed(f"no answer from {address} in {share:.1f}s")
                except ssl.SSLError as exc:
                    failure = ConnectFailed(f"TLS handshake failed: {exc.reason or exc}")
                except OSError as exc:
                    # "Connection refused", not asyncio's "Connect call failed (…)".
                    reason = os.strerror(exc.errno) if exc.errno else str(exc)
                    failure = ConnectFailed(reason or type(exc).__name__)
            assert failure is not None  # addresses is never empty
            raise failure

    async def _addresses_of(self, endpoint: Endpoint) -> list[str]:
        if endpoint.literal is not None:
            if endpoint.refusal and not self._allow_private:
                raise UnsafeTargetError(f"target {endpoint.host} is a {endpoint.refusal}")
            return [endpoint.host]
        key = (endpoint.host, endpoint.port)
        cached = self._addresses.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        # One lookup per name however many requests want it: a burst of jobs for a name
        # the resolver is slow to fail on would otherwise queue hundreds of lookups in the
        # resolver's few threads (and a stopping process would wait for all of them).
        return await self._lookups.run(key, lambda: self._resolve(endpoint.host, endpoint.port))

    async def _resolve(self, host: str, port: int) -> list[str]:
        try:
            results = await self._resolver.resolve(host, port, socket.AF_UNSPEC)
        except OSError as exc:
            raise DnsFailed(host, exc.strerror or str(exc)) from exc
        addresses = [r["host"] for r in results]
        if not self._allow_private:  # the guard, whatever resolver was passed in
            check_addresses(host, addresses)
        if not addresses:
            raise DnsFailed(host, "no address")
        if len(self._addresses) >= 10_000:
            self._addresses.clear()
        self._addresses[(host, port)] = (time.monotonic() + DNS_TTL, addresses)
        return addresses

    async def close(self) -> None:
        self._closed = True
        self._deadlines.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self._busy):
            conn.abort()
        for idle in self._idle.values():
            for conn in list(idle):
                conn.abort()
        self._idle.clear()
        await self._lookups.close()
        await self._resolver.close()


async def open_connection(
    loop: asyncio.AbstractEventLoop, factory: Any, host: str, port: int, **kwargs: Any
) -> tuple[asyncio.BaseTransport, _Connection]:
    """The one place a connection to a target is opened (tests watch it)."""
    transport, conn = await loop.create_connection(factory, host, port, **kwargs)
    return transport, cast(_Connection, conn)
