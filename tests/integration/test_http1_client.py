"""The dispatcher's HTTP/1.1 client (``services/dispatcher/http1.py``) against real
servers on loopback: a recording aiohttp server for what a target receives, and scripted
raw servers for answers a well-behaved framework would never send (chunked, no length,
oversized, informational, garbage, cut short, never).

Every connection the client opens is counted at ``http1.open_connection``, which also
refuses anything but 127.0.0.0/8 (nothing here may leave the machine).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from services.dispatcher import http1, sender
from services.dispatcher.delivery import outcome_of_error
from shared.settings import Settings
from tests.support.procs import free_port
from tests.support.targets import BlackHole, TargetServer
from tests.support.tls import self_signed
from tests.unit.test_urlsafety import StubResolver

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Opens:
    def __init__(self) -> None:
        self.count = 0


@pytest.fixture(autouse=True)
def opens(monkeypatch: pytest.MonkeyPatch) -> Opens:
    seen = Opens()
    opener = http1.open_connection

    async def counted(
        loop: asyncio.AbstractEventLoop, factory: Any, host: str, port: int, **kw: Any
    ) -> Any:
        assert host.startswith("127."), f"a connection to {host} was about to open"
        seen.count += 1
        return await opener(loop, factory, host, port, **kw)

    monkeypatch.setattr(http1, "open_connection", counted)
    return seen


@pytest.fixture
async def client() -> AsyncIterator[http1.Http1Client]:
    http = sender.make_client(Settings(allow_private_targets=True, delivery_timeout=2))
    yield http
    await http.close()


async def post(
    http: http1.Http1Client,
    url: str,
    body: bytes = b'{"n": 1}',
    headers: dict[str, str] | None = None,
    excerpt_bytes: int = 64,
) -> http1.Answer:
    return await http.post(URL(url), body, headers or {}, excerpt_bytes=excerpt_bytes)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


class Scripted:
    """A raw server on loopback: every connection runs ``script``; counts connections
    and the requests read with ``read``."""

    def __init__(self, script: Callable[[Scripted, asyncio.StreamReader, asyncio.StreamWriter],
                                        Awaitable[None]]) -> None:  # fmt: skip
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def read(self, reader: asyncio.StreamReader) -> bytes:
        request = await read_request(reader)
        self.requests.append(request)
        return request

    async def __aenter__(self) -> Scripted:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.script(self, reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


def answering(*answers: bytes, then_close: bool = False) -> Any:
    """A script that reads a request and writes the next answer, for each answer."""

    async def script(server: Scripted, reader: asyncio.StreamReader, writer: Any) -> None:
        for answer in answers:
            await server.read(reader)
            writer.write(answer)
            await writer.drain()
        if not then_close:
            await reader.read()  # until the client closes

    return script


# --- what a target receives -----------------------------------------------------------


async def test_a_post_arrives_byte_for_byte_and_its_answer_is_read(
    client: http1.Http1Client, opens: Opens
) -> None:
    async with TargetServer() as target:
        target.reply("/hook", 429, headers={"Retry-After": "7"}, body=b"slow down")
        body = b'{"order": 1, "note": "caf\xc3\xa9"}'
        headers = {"content-type": "application/json", "x-webhook-event": "order.paid"}
        answer = await post(client, target.url("/hook?token=a%20b"), body, headers)
        assert answer == http1.Answer(429, "7", b"slow down")
        (got,) = target.received()
    assert got.body == body
    assert got.headers["host"] == f"127.0.0.1:{target.port}"
    assert got.headers["content-length"] == str(len(body))
    assert got.headers["x-webhook-event"] == "order.paid"
    # No compression asked for: an excerpt of a gzip body would be noise.
    assert "accept-encoding" not in got.headers
    assert opens.count == 1


async def test_connections_are_kept_alive_and_reused(
    client: http1.Http1Client, opens: Opens
) -> None:
    async with TargetServer() as target:
        for _ in range(5):
            assert (await post(client, target.url())).status == 200
        # Five at once need five connections; they join the one already open.
        answers = await asyncio.gather(*(post(client, target.url()) for _ in range(5)))
        assert {a.status for a in answers} == {200}
        assert client.open_connections() == 5
        assert len(target.received()) == 10
    assert opens.count == 5


async def test_no_excerpt_asked_means_none(client: http1.Http1Client) -> None:
    async with TargetServer() as target:
        answer = await post(client, target.url(), excerpt_bytes=0)
    assert answer == http1.Answer(200, None, None)


# --- answers of every shape -----------------------------------------------------------


async def test_a_chunked_answer_is_read(client: http1.Http1Client) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    async with Scripted(answering(chunked, chunked)) as server:
        assert await post(client, server.url) == http1.Answer(200, None, b"hello world")
        assert await post(client, server.url) == http1.Answer(200, None, b"hello world")
    assert server.connections == 1


async def test_an_answer_without_a_length_is_read_to_the_close(
    client: http1.Http1Client,
) -> None:
    async with Scripted(answering(b"HTTP/1.1 202 Accepted\r\n\r\nqueued", then_close=True)) as s:
        assert await post(client, s.url) == http1.Answer(202, None, b"queued")


async def test_a_long_body_is_cut_at_the_excerpt_and_its_connection_dropped(
    client: http1.Http1Client, opens: Opens
) -> None:
    big = b"x" * (1024 * 1024)
    answer = b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n" % len(big) + big
    async with Scripted(answering(answer, then_close=True)) as server:
        started = time.monotonic()
        got = await post(client, server.url, excerpt_bytes=100)
        assert got == http1.Answer(500, None, b"x" * 100)
        assert time.monotonic() - started < 2
        async with TargetServer() as target:
            await post(client, target.url())
    assert client.open_connections() == 1  # the second target's only
    assert opens.count == 2


async def test_informational_answers_are_skipped(client: http1.Http1Client) -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n"
    )
    async with Scripted(answering(answer)) as server:
        assert await post(client, server.url) == http1.Answer(204, None, b"")


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "invalid HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (http1.MAX_HEAD + 10), "headers over"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
         b"Connection: Upgrade\r\n\r\n", "switched protocols"),
    ],
)  # fmt: skip
async def test_what_is_not_an_http_answer_is_a_retryable_failure(
    client: http1.Http1Client, answer: bytes, error: str
) -> None:
    async with Scripted(answering(answer)) as server:
        with pytest.raises(http1.BadAnswer, match=error) as failed:
            await post(client, server.url)
    outcome = outcome_of_error(failed.value, timeout=2)
    assert outcome.retryable
    assert (outcome.error or "").startswith("invalid HTTP answer")


async def test_a_target_that_closes_without_answering_is_a_disconnect(
    client: http1.Http1Client,
) -> None:
    async def hang_up(server: Scripted, reader: asyncio.StreamReader, _: Any) -> None:
        await server.read(reader)

    async with Scripted(hang_up) as server:
        with pytest.raises(http1.Disconnected) as failed:
            await post(client, server.url)
    # A fresh connection is not tried again: the target may have acted on the request.
    assert len(server.requests) == 1
    outcome = outcome_of_error(failed.value, timeout=2)
    assert outcome.retryable
    assert (outcome.error or "").startswith("server disconnected")


async def test_a_kept_alive_connection_the_target_closed_is_replaced(
    client: http1.Http1Client, opens: Opens
) -> None:
    async with Scripted(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                                  then_close=True)) as server:  # fmt: skip
        assert (await post(client, server.url)).status == 200
        await asyncio.sleep(0.2)  # the close reaches the client, or is on its way
        assert (await post(client, server.url)).status == 200
    assert server.connections == 2
    assert len(server.requests) == 2
    assert opens.count == 2


async def test_a_target_that_never_answers_times_out(opens: Opens) -> None:
    http = sender.make_client(Settings(allow_private_targets=True, delivery_timeout=0.5))
    try:
        async with BlackHole() as hole:
            started = time.monotonic()
            with pytest.raises(TimeoutError) as failed:
                await post(http, hole.url())
            assert 0.4 < time.monotonic() - started < 1.5
        assert http.open_connections() == 0
    finally:
        await http.close()
    outcome = outcome_of_error(failed.value, timeout=0.5)
    assert (outcome.retryable, outcome.timed_out, outcome.error) == (
        True,
        True,
        "timeout after 0.5s",
    )


async def test_a_refused_connection_is_retryable(client: http1.Http1Client) -> None:
    with pytest.raises(http1.ConnectFailed) as failed:
        await post(client, f"http://127.0.0.1:{free_port()}/hook")
    outcome = outcome_of_error(failed.value, timeout=2)
    assert (outcome.retryable, outcome.error) == (True, "connection failed: Connection refused")


async def test_a_name_is_cached_and_its_addresses_tried_in_turn(
    monkeypatch: pytest.MonkeyPatch, opens: Opens
) -> None:
    # Nothing listens on 127.0.0.2 at the target's port: refused at once, then the next.
    stub = StubResolver({"hooks.example": ["127.0.0.2", "127.0.0.1"]})
    monkeypatch.setattr(sender, "DefaultResolver", lambda: stub)
    http = sender.make_client(Settings(allow_private_targets=True, delivery_timeout=2))
    try:
        async with TargetServer() as target:
            url = f"http://hooks.example:{target.port}/hook"
            assert (await post(http, url)).status == 200
            assert (await post(http, url)).status == 200
            (got, _) = target.received()
    finally:
        await http.close()
    assert got.headers["host"] == f"hooks.example:{target.port}"
    assert stub.asked == ["hooks.example"]  # the second request rode the same connection
    assert opens.count == 2  # 127.0.0.2 (refused), then 127.0.0.1


async def test_requests_at_once_to_a_new_name_share_one_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stub = StubResolver({"burst.example": ["127.0.0.1"]})
    monkeypatch.setattr(sender, "DefaultResolver", lambda: stub)
    http = sender.make_client(Settings(allow_private_targets=True, delivery_timeout=2))
    try:
        async with TargetServer() as target:
            url = f"http://burst.example:{target.port}/hook"
            answers = await asyncio.gather(*(post(http, url) for _ in range(20)))
    finally:
        await http.close()
    assert {a.status for a in answers} == {200}
    assert stub.asked == ["burst.example"]


@pytest.mark.parametrize("value", ["a\r\nx-injected: 1", "a\nb", "a\rb", "a\0b"])
async def test_a_header_that_would_break_a_line_is_refused_before_sending(
    client: http1.Http1Client, opens: Opens, value: str
) -> None:
    with pytest.raises(http1.InvalidRequest) as refused:
        await post(client, "http://127.0.0.1:9/hook", headers={"x-custom": value})
    assert opens.count == 0
    assert not outcome_of_error(refused.value, timeout=2).retryable


async def test_closing_the_client_closes_its_connections(
    client: http1.Http1Client,
) -> None:
    async with TargetServer() as target:
        await post(client, target.url())
        assert client.open_connections() == 1
        await client.close()
        assert client.open_connections() == 0
        with pytest.raises(RuntimeError, match="closed"):
            await post(client, target.url())


# --- TLS ------------------------------------------------------------------------------


async def _tls_target(tmp_path: Path) -> tuple[asyncio.Server, int, Any]:
    cert = self_signed()
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_request(reader)
            writer.write(ok)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=cert.server_context(tmp_path))
    return server, server.sockets[0].getsockname()[1], cert


async def test_tls_to_a_trusted_certificate(tmp_path: Path) -> None:
    server, port, cert = await _tls_target(tmp_path)
    http = http1.Http1Client(
        sender.GuardedResolver(sender.DefaultResolver(), allow_private=True),
        allow_private=True,
        timeout=2,
        ssl_context=cert.client_context(),
    )
    try:
        answer = await post(http, f"https://127.0.0.1:{port}/hook")
        assert answer == http1.Answer(200, None, b"secret")
    finally:
        await http.close()
        server.close()


async def test_tls_to_an_untrusted_certificate_is_a_certificate_error(
    client: http1.Http1Client, tmp_path: Path
) -> None:
    server, port, _ = await _tls_target(tmp_path)
    try:
        with pytest.raises(http1.CertificateFailed) as failed:
            await post(client, f"https://127.0.0.1:{port}/hook")
    finally:
        server.close()
    outcome = outcome_of_error(failed.value, timeout=2)
    assert outcome.retryable
    assert (outcome.error or "").startswith("TLS certificate error: ")
