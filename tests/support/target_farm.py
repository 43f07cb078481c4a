"""Many HTTP targets on loopback in one process: one port each, slow like real endpoints.

``python -m tests.support.target_farm --targets 1000 --median-ms 150 --sigma 0.6
--hang-fraction 0.01 --hang-ms 3000`` listens on 1,000 free loopback ports (the
dispatcher's per-target unit is host:port, so each port is a target of its own). Every
request waits a log-normal delay (median ``median-ms``, shape ``sigma``) and answers 200;
a ``hang-fraction`` of them instead waits ``hang-ms`` (past the sender's timeout) before
answering. ``--median-ms 0`` answers at once. The draws come from one seeded generator.

A control port (``GET /_ports``, ``/_stats``, ``/_arrivals``, ``POST /_reset``) reports
the ports, the requests (per ``webhook-id``: each arrival's time and whether it hung) and
the most requests held open at once. ``TargetFarm`` runs it as a child process.

Only ever binds loopback: nothing here sends or listens beyond this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict, deque
from typing import Any, cast

from aiohttp import web

from tests.support.procs import ChildServer, free_port
from tests.support.rawhttp import head_fields
from tests.support.stack import ROOT

LOOPBACK = "127.0.0.1"


class Delays:
    """The farm's draws: how long a request waits before its answer, and whether it hangs.
    Also what ``bench.timed_sends`` waits instead of sending, so both draw alike."""

    def __init__(
        self, median: float, sigma: float, hang_fraction: float, hang: float, seed: int
    ) -> None:
        self.mu = math.log(median) if median > 0 else None
        self.sigma = sigma
        self.hang_fraction = hang_fraction
        self.hang = hang
        self.random = random.Random(seed)

    @classmethod
    def of(cls, args: argparse.Namespace) -> Delays:
        """From the flags ``add_arguments`` defines."""
        return cls(args.median_ms / 1000, args.sigma, args.hang_fraction, args.hang_ms / 1000,
                   args.seed)  # fmt: skip

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--median-ms", type=float, default=0)
        parser.add_argument("--sigma", type=float, default=0.6)
        parser.add_argument("--hang-fraction", type=float, default=0.0)
        parser.add_argument("--hang-ms", type=float, default=0)
        parser.add_argument("--seed", type=int, default=13)

    @staticmethod
    def flags(**draw: float) -> list[str]:
        """``median_ms=150, hang_fraction=0.01`` as the command line's flags."""
        return [part for name, value in draw.items()
                for part in (f"--{name.replace('_', '-')}", str(value))]  # fmt: skip

    def draw(self) -> tuple[float, bool]:
        """Seconds until the answer (0: at once), and whether that is a hang."""
        if self.mu is None:
            return 0.0, False
        if self.random.random() < self.hang_fraction:
            return self.hang, True
        return self.random.lognormvariate(self.mu, self.sigma), False


class _Farm:
    def __init__(self, delays: Delays) -> None:
        self.delays = delays
        self.arrivals: dict[str, list[tuple[float, bool]]] = defaultdict(list)
        self.open = 0
        self.most_open = 0
        # (target port, client port) of each connection seen: requests / connections is
        # how well the client reused its connections.
        self.connections: set[tuple[int, int]] = set()

    def arrived(self, webhook_id: str) -> tuple[float, bool]:
        """One request came in: its delay (0: answer at once) and whether it hangs."""
        delay, hung = self.delays.draw()
        self.arrivals[webhook_id].append((time.time(), hung))
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        return delay, hung

    async def stats(self, _: web.Request) -> web.Response:
        times = [t for ts in self.arrivals.values() for t, _ in ts]
        return web.json_response(
            {
                "requests": len(times),
                "unique": len(self.arrivals),
                "hung": sum(h for ts in self.arrivals.values() for _, h in ts),
                "first": min(times) if times else None,
                "last": max(times) if times else None,
                "open": self.open,
                "most_open": self.most_open,
                "connections": len(self.connections),
            }
        )

    async def dump(self, _: web.Request) -> web.Response:
        return web.json_response(self.arrivals)

    async def reset(self, _: web.Request) -> web.Response:
        self.arrivals.clear()
        self.connections.clear()
        self.most_open = self.open
        return web.json_response({"reset": True})


_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
_BAD = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class _Target(asyncio.Protocol):
    """One connection to a target port, on a bare ``asyncio.Protocol``: HTTP/1.1
    keep-alive, ``Content-Length`` bodies, each answer a prepared 200 written by a timer
    when its delay is up (in arrival order, should a client pipeline).

    Not aiohttp's server, because the farm shares the two cores with the dispatcher it
    measures: aiohttp spent 72 µs of CPU per instant request and 160 µs per slow one (a
    handler task and a sleep each, five connections per 36 requests), so in the slow
    run the farm took more CPU than the dispatcher (5.2 against 4.9 s while delivering,
    ``bench.targets``) and the ratio measured the farm as much as Hookstream.

    A request whose client gave up still waits its whole delay, counted as open, as a
    real endpoint's handler would."""

    def __init__(self, farm: _Farm) -> None:
        self._farm = farm
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        # One flag per request not yet answered, oldest first: True once its delay is up.
        self._due: deque[list[bool]] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        local, peer = transport.get_extra_info("sockname"), transport.get_extra_info("peername")
        self._farm.connections.add((local[1], peer[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            _, fields = head_fields(bytes(buffer[:end]))
            try:
                length = int(fields.get(b"content-length", 0))
            except ValueError:
                length = -1
            if length < 0 or b"transfer-encoding" in fields:
                self._write(_BAD)
                if self._transport is not None:
                    self._transport.close()
                return
            if len(buffer) < end + 4 + length:
                return
            del buffer[: end + 4 + length]
            delay, _ = self._farm.arrived(fields.get(b"webhook-id", b"").decode())
            due = [False]
            self._due.append(due)
            if delay:
                asyncio.get_running_loop().call_later(delay, self._answer, due)
            else:
                self._answer(due)

    def _answer(self, due: list[bool]) -> None:
        self._farm.open -= 1
        due[0] = True
        while self._due and self._due[0][0]:
            self._due.popleft()
            self._write(_OK)

    def _write(self, answer: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(answer)


def _listen(count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, 0))
        sock.listen(1024)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


async def serve(args: argparse.Namespace) -> None:
    farm = _Farm(Delays.of(args))
    loop = asyncio.get_running_loop()
    ports: list[int] = []

    async def list_ports(_: web.Request) -> web.Response:
        if not ports:  # still binding them: the caller asks again
            return web.json_response({"starting": True}, status=503)
        return web.json_response(ports)

    control = web.Application()
    control.router.add_get("/_ports", list_ports)
    control.router.add_get("/_stats", farm.stats)
    control.router.add_get("/_arrivals", farm.dump)
    control.router.add_post("/_reset", farm.reset)
    control_runner = web.AppRunner(control, access_log=None)
    await control_runner.setup()
    # The control port first: the targets' ports are the kernel's pick and could take it.
    await web.TCPSite(control_runner, LOOPBACK, args.control_port).start()
    sockets = _listen(args.targets)
    for sock in sockets:
        await loop.create_server(lambda: _Target(farm), sock=sock, backlog=1024)
    ports.extend(s.getsockname()[1] for s in sockets)
    await asyncio.Event().wait()


class TargetFarm(ChildServer):
    """The farm as a child process; ``ports`` once it answers on its control port."""

    def __init__(
        self,
        targets: int,
        *,
        median_ms: float = 0,
        sigma: float = 0.6,
        hang_fraction: float = 0.0,
        hang_ms: float = 0,
        seed: int = 13,
    ) -> None:
        self.control = free_port()
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "tests.support.target_farm",
                "--targets", str(targets), "--control-port", str(self.control),
                *Delays.flags(median_ms=median_ms, sigma=sigma, hang_fraction=hang_fraction,
                              hang_ms=hang_ms, seed=seed),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=self._errors,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                self.ports: list[int] = self._get("/_ports")
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self._errors.seek(0)
                    errors = self._errors.read().decode(errors="replace")[-3000:]
                    self.stop()
                    raise RuntimeError(f"target farm did not start:\n{errors}") from None
                time.sleep(0.1)

    def url(self, n: int, path: str = "/hook") -> str:
        return f"http://{LOOPBACK}:{self.ports[n]}{path}"

    def _get(self, path: str) -> Any:
        url = f"http://{LOOPBACK}:{self.control}{path}"
        with urllib.request.urlopen(url, timeout=30) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/_stats")
        return result

    def arrivals(self) -> dict[str, list[tuple[float, bool]]]:
        """Per ``webhook-id``: (arrival time, hung) of each request."""
        return {k: [(t, bool(h)) for t, h in v] for k, v in self._get("/_arrivals").items()}

    def reset(self) -> None:
        url = f"http://{LOOPBACK}:{self.control}/_reset"
        request = urllib.request.Request(url, method="POST")
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310
            pass

    def stop(self) -> None:
        super().stop()
        self._errors.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Many slow HTTP targets on loopback.")
    parser.add_argument("--targets", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    Delays.add_arguments(parser)
    args = parser.parse_args()
    # A listening socket per target plus the connections to each: past the usual 1,024.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    uvloop.run(serve(args))


if __name__ == "__main__":
    main()
