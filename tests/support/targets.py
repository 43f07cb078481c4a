"""Real HTTP targets on loopback for tests and benchmarks.

``BlackHole`` accepts connections and never answers.

``TargetServer`` runs in the test's event loop (aiohttp.web on 127.0.0.1, a free port),
records every request (path, headers, exact body, arrival time) and answers as told per
path: any status, extra headers (``Retry-After``), a body, a delay.

``SinkProcess`` runs the same kind of server as a separate process (``python -m
tests.support.targets``) so a benchmark's sink does not share the dispatcher's or the
load generator's event loop. It answers 200 at once (optionally after a fixed delay) and
keeps, per ``webhook-id``, every arrival time; ``GET /_stats`` and ``GET /_arrivals``
report them.

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
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.procs import ChildServer, free_port
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


def _sink_app(delay: float) -> web.Application:
    # First arrivals in a dict of strings and floats, which the garbage collector does not
    # track; repeats (rare) in lists. One list per delivery would make every full
    # collection of a long run scan a million objects, stall the sink, and record late
    # arrivals that Hookstream did not cause.
    first: dict[str, float] = {}
    repeats: dict[str, list[float]] = defaultdict(list)

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        now = time.time()
        key = request.headers.get("webhook-id", "")
        if key in first:
            repeats[key].append(now)
        else:
            first[key] = now
        if delay:
            await asyncio.sleep(delay)
        return web.Response(text="ok")

    def arrivals() -> dict[str, list[float]]:
        return {k: [t, *repeats.get(k, ())] for k, t in first.items()}

    async def stats(_: web.Request) -> web.Response:
        times = [*first.values(), *(t for ts in repeats.values() for t in ts)]
        return web.json_response(
            {
                "requests": len(times),
                "unique": len(first),
                "first": min(times) if times else None,
                "last": max(times) if times else None,
            }
        )

    async def dump(_: web.Request) -> web.Response:
        return web.json_response(arrivals())

    async def reset(_: web.Request) -> web.Response:
        first.clear()
        repeats.clear()
        return web.json_response({"reset": True})

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_get("/_stats", stats)
    app.router.add_get("/_arrivals", dump)
    app.router.add_post("/_reset", reset)
    app.router.add_route("POST", "/{tail:.*}", hook)
    return app


class SinkProcess(ChildServer):
    """``python -m tests.support.targets`` on a free loopback port, in its own process."""

    def __init__(self, *, delay_ms: int = 0) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.targets", "--port", str(self.port)]
            + (["--delay-ms", str(delay_ms)] if delay_ms else []),
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
    args = parser.parse_args()
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    # Start-up's objects out of every later collection's scan (see _sink_app).
    gc.collect()
    gc.freeze()
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
