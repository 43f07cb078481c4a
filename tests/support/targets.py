"""Real HTTP targets on loopback for tests and benchmarks.

``BlackHole`` accepts connections and never answers.

``TargetServer`` runs in the test's event loop (aiohttp.web on 127.0.0.1, a free port),
records every request (path, headers, exact body, arrival time) and answers as told per
path: any status, extra headers (``Retry-After``), a body, a delay.

``SinkProcess`` runs the same kind of server as a separate process (``python -m
tests.support.targets``) so a benchmark's sink does not share the dispatcher's or the
load generator's event loop. It answers 200 at once (optionally after a fixed delay) and
keeps, per ``webhook-id``, every arrival time; ``GET /_stats`` and ``GET /_arrivals``
report them. ``bare=True`` serves the same on a bare asyncio protocol (the latency
bench, where the sink's own CPU would weigh on what it measures).

Only ever binds loopback: nothing here sends or listens beyond this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
import urllib.request
from array import array
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web

from tests.support.procs import ChildServer, free_port
from tests.support.rawhttp import head_fields
from tests.support.stack import ROOT

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # time.time() on arrival


@dataclass(frozen=True, slots=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0


class TargetServer:
    """A recording HTTP server in the current event loop."""

    def __init__(self) -> None:
        self.port = free_port()
        self._replies: dict[str, Reply] = {}
        self._received: list[Received] = []
        self._arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> TargetServer:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str = "/hook", host: str = LOOPBACK) -> str:
        return f"http://{host}:{self.port}{path}"

    def reply(
        self,
        path: str,
        status: int = 200,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"ok",
        delay: float = 0.0,
    ) -> None:
        self._replies[path] = Reply(status, headers or {}, body, delay)

    def received(self, path: str | None = None) -> list[Received]:
        return [r for r in self._received if path is None or r.path == path]

    async def wait_for(
        self, count: int, path: str | None = None, timeout: float = 30.0
    ) -> list[Received]:
        """The first ``count`` requests (to ``path``), waiting up to ``timeout``."""
        async with asyncio.timeout(timeout):
            while len(got := self.received(path)) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return got

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._received.append(
            Received(
                path=request.path,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                at=time.time(),
            )
        )
        self._arrived.set()
        reply = self._replies.get(request.path, Reply())
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)


class BlackHole:
    """Accepts connections on loopback and never answers: the worst kind of target."""

    def __init__(self) -> None:
        self.port = free_port()
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> BlackHole:
        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self._writers.append(writer)

        self._server = await asyncio.start_server(swallow, LOOPBACK, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def url(self, path: str = "/hook") -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"


# --- the sink as its own process ----------------------------------------------------


class _Arrivals:
    """Every arrival as appended bytes, grouped by key only when asked: the ``webhook-id``
    keys in bytearrays (one per line) and the times in arrays of doubles, both in chunks
    of ``CHUNK`` arrivals.

    Recording must cost the same at the millionth arrival as at the first. A dict keyed by
    delivery id rehashes every entry whenever it grows past two thirds of its table: the
    latency soak's worst webhooks (224 ms and 134 ms "request started → arrival", in two
    runs) were exactly those that arrived when it held 699,050 and 349,525 entries. A list
    per delivery would instead make every full collection scan a million objects, and one
    growing buffer is copied whole when it outgrows its block (7 ms at 30 MB). Chunks of
    bytes and doubles are never rehashed, never copied whole, never scanned."""

    CHUNK = 65_536

    _chunks: list[tuple[bytearray, array[float]]]
    _keys: bytearray  # the last chunk's
    _times: array[float]  # the last chunk's
    _count: int
    _first: float | None
    _last: float | None
    _unique: set[bytes]
    _folded: tuple[int, int]  # (chunk, byte) up to which keys are in _unique

    def __init__(self) -> None:
        self.reset()

    def record(self, key: bytes) -> None:
        if len(self._times) >= self.CHUNK:
            self._keys, self._times = bytearray(), array("d")
            self._chunks.append((self._keys, self._times))
        now = time.time()
        self._keys += key.replace(b"\n", b"") + b"\n"
        self._times.append(now)
        self._count += 1
        self._first = self._first or now
        self._last = now

    def _pairs(self) -> list[tuple[bytes, float]]:
        return [
            (key, at)
            for keys, times in self._chunks
            for key, at in zip(bytes(keys).split(b"\n")[:-1], times, strict=True)
        ]

    def all(self) -> dict[str, list[float]]:
        grouped: dict[str, list[float]] = defaultdict(list)
        for key, at in self._pairs():
            grouped[key.decode()].append(at)
        return dict(grouped)

    def stats(self) -> dict[str, Any]:
        # The keys that arrived since the last call join the set of those seen: the
        # benches poll this while deliveries flow, so a poll costs what is new.
        while True:
            keys = self._chunks[self._folded[0]][0]
            end = len(keys)
            self._unique.update(bytes(keys[self._folded[1] : end]).split(b"\n")[:-1])
            if self._folded[0] == len(self._chunks) - 1:
                self._folded = (self._folded[0], end)
                break
            self._folded = (self._folded[0] + 1, 0)
        return {
            "requests": self._count,
            "unique": len(self._unique),
            "first": self._first,
            "last": self._last,
        }

    def reset(self) -> dict[str, Any]:
        self._keys, self._times = bytearray(), array("d")
        self._chunks = [(self._keys, self._times)]
        self._count, self._first, self._last = 0, None, None
        self._unique = set()
        self._folded = (0, 0)
        return {"reset": True}


def _sink_app(delay: float) -> web.Application:
    seen = _Arrivals()

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        seen.record(request.headers.get("webhook-id", "").encode())
        if delay:
            await asyncio.sleep(delay)
        return web.Response(text="ok")

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(seen.stats())

    async def dump(_: web.Request) -> web.Response:
        return web.json_response(seen.all())

    async def reset(_: web.Request) -> web.Response:
        return web.json_response(seen.reset())

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_get("/_stats", stats)
    app.router.add_get("/_arrivals", dump)
    app.router.add_post("/_reset", reset)
    app.router.add_route("POST", "/{tail:.*}", hook)
    return app


_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"


class _BareSink(asyncio.Protocol):
    """The sink's hook and control endpoints on a bare ``asyncio.Protocol``: HTTP/1.1
    keep-alive, ``Content-Length`` bodies, answers written as prepared bytes. For the
    latency bench, where the sink shares two cores with what it measures: aiohttp's server
    spent ~90 µs of CPU per request there (bench.latency's CPU per webhook), a sixth of a
    core at its soak rate."""

    def __init__(self, seen: _Arrivals) -> None:
        self._seen = seen
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            start, fields = head_fields(bytes(buffer[:end]))
            path = start.split(b" ", 2)[1]
            length = int(fields.get(b"content-length", 0))
            if len(buffer) < end + 4 + length:
                return
            del buffer[: end + 4 + length]
            assert self._transport is not None
            if path.startswith(b"/_"):
                self._transport.write(self._control(path))
            else:
                self._seen.record(fields.get(b"webhook-id", b""))
                self._transport.write(_OK)

    def _control(self, path: bytes) -> bytes:
        answers = {
            b"/_stats": self._seen.stats,
            b"/_arrivals": self._seen.all,
            b"/_reset": self._seen.reset,
        }
        if path not in answers:
            return b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
        body = json.dumps(answers[path]()).encode()
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )


async def _serve_bare(port: int) -> None:
    seen = _Arrivals()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _BareSink(seen), LOOPBACK, port, backlog=1024)
    async with server:
        await server.serve_forever()


class SinkProcess(ChildServer):
    """``python -m tests.support.targets`` on a free loopback port, in its own process."""

    def __init__(self, *, delay_ms: int = 0, bare: bool = False) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.targets", "--port", str(self.port)]
            + (["--delay-ms", str(delay_ms)] if delay_ms else [])
            + (["--bare"] if bare else []),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                self.stats()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("sink did not start") from None
                time.sleep(0.05)

    def url(self, path: str = "/hook") -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=10) as resp:  # noqa: S310
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/_stats")
        return result

    def arrivals(self) -> dict[str, list[float]]:
        result: dict[str, list[float]] = self._get("/_arrivals")
        return result

    def reset(self) -> None:
        request = urllib.request.Request(self.url("/_reset"), method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description="A fast recording HTTP sink on loopback.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=int, default=0)
    parser.add_argument(
        "--bare", action="store_true", help="a bare asyncio protocol instead of aiohttp"
    )
    args = parser.parse_args()
    import uvloop

    if args.bare and args.delay_ms:
        parser.error("--bare answers at once: no --delay-ms")
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    # Start-up's objects out of every later collection's scan (see _Arrivals).
    gc.collect()
    gc.freeze()
    if args.bare:
        loop.run_until_complete(_serve_bare(args.port))
        return
    web.run_app(
        _sink_app(args.delay_ms / 1000),
        host=LOOPBACK,
        port=args.port,
        access_log=None,
        print=None,
        loop=loop,
    )


if __name__ == "__main__":
    main()
