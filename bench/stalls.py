"""Event-loop stalls seen from outside: a probe served by a process's own loop, and a
watcher that polls such endpoints on a fixed clock.

``python -m bench.stalls probe --port P services.dispatcher`` runs the dispatcher as
``python -m services.dispatcher`` would, with one addition: a tiny HTTP endpoint on
127.0.0.1:P served by the dispatcher's own event loop (``uvloop.run``, which
``shared.runner`` calls, is wrapped to start it). The dispatcher's metrics port cannot
serve this purpose: prometheus_client answers it from a thread, which keeps answering
while the loop is blocked (the GIL is handed over every 5 ms). Ingest needs no probe: its
``/health`` is served by its loop.

``python -m bench.stalls watch --seconds S name=URL ...`` polls each URL every 10 ms (one
request outstanding per URL, keep-alive when the server allows it) for S seconds and
prints one JSON line: per URL, the answers and the largest gaps between consecutive
answers (a gap is at least the 10 ms interval; a loop blocked for 100 ms shows as a gap
of ~110 ms). It runs in its own process so that the bench's own work cannot delay an
answer; its own loop lag is reported too (``_self``), to tell when a gap is its fault.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import runpy
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Sequence
from typing import Any
from urllib.parse import urlsplit

from tests.support.stack import ROOT

LOOPBACK = "127.0.0.1"
EVERY_S = 0.01
TOP = 5


# --- the probe, inside the measured process ----------------------------------------


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    writer.close()


def probe(port: int, module: str, args: Sequence[str]) -> None:
    import uvloop

    original = uvloop.run

    def run(main: Awaitable[Any], **kwargs: Any) -> Any:
        async def probed() -> Any:
            server = await asyncio.start_server(_answer, LOOPBACK, port)
            try:
                return await main
            finally:
                server.close()

        return original(probed(), **kwargs)

    uvloop.run = run
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


# --- the watcher ---------------------------------------------------------------------


class _Poller:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname == LOOPBACK, f"{url}: loopback only"
        self.port = parts.port or 80
        self.request = f"GET {parts.path or '/'} HTTP/1.1\r\nhost: {LOOPBACK}\r\n\r\n".encode()
        self.answers: list[float] = []
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _exchange(self) -> None:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(LOOPBACK, self.port)
        assert self._reader is not None
        self._writer.write(self.request)
        head = (await self._reader.readuntil(b"\r\n\r\n")).lower()
        keep = head.startswith(b"http/1.1") and b"connection: close" not in head
        length = None
        for line in head.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length is None:
            await self._reader.read()
            keep = False
        else:
            await self._reader.readexactly(length)
        if not keep:
            self._close()

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def run(self, until: float, stop: asyncio.Event) -> None:
        next_at = time.monotonic()
        while (now := time.monotonic()) < until and not stop.is_set():
            await asyncio.sleep(max(0.0, next_at - now))
            # A late answer does not queue up requests: the next one leaves a tick later.
            next_at = max(next_at + EVERY_S, time.monotonic())
            try:
                async with asyncio.timeout(max(0.001, until - time.monotonic())):
                    await self._exchange()
            except TimeoutError:
                break  # the watch is over while a request was out
            except (OSError, asyncio.IncompleteReadError, ValueError):
                self._close()  # not up yet, or went away: try again next tick
                continue
            self.answers.append(time.time())
        self._close()


def _gaps(answers: list[float], started: float) -> dict[str, Any]:
    gaps = sorted(((b - a, a - started) for a, b in itertools.pairwise(answers)), reverse=True)
    return {
        "answers": len(answers),
        "max_gap_ms": round(gaps[0][0] * 1000, 1) if gaps else None,
        "top": [[round(g * 1000, 1), round(at, 2)] for g, at in gaps[:TOP]],
        "over_50ms": sum(1 for g, _ in gaps if g > 0.05),
    }


async def _self_lag(until: float, stop: asyncio.Event, started: float) -> tuple[float, float]:
    """The watcher's own worst loop lag, and when (seconds after ``started``)."""
    worst, at = 0.0, 0.0
    while (before := time.monotonic()) < until and not stop.is_set():
        await asyncio.sleep(0.005)
        lag = time.monotonic() - before - 0.005
        if lag > worst:
            worst, at = lag, time.time() - started
    return worst, at


async def watch(seconds: float, targets: dict[str, str]) -> dict[str, Any]:
    """Poll for ``seconds``, or until SIGTERM."""
    started = time.time()
    until = time.monotonic() + seconds
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    pollers = {name: _Poller(url) for name, url in targets.items()}
    polls = asyncio.gather(*(p.run(until, stop) for p in pollers.values()))
    (lag, lag_at), _ = await asyncio.gather(_self_lag(until, stop, started), polls)
    result = {name: _gaps(p.answers, started) for name, p in pollers.items()}
    result["_self"] = {
        "max_lag_ms": round(lag * 1000, 1),
        "at": round(lag_at, 2),
        "started_at": started,
    }
    return result


class JsonChild:
    """A ``python -m <module> ...`` helper in its own process that prints one JSON line
    when it ends, at its deadline or on SIGTERM: start it, do the work, ``result()``
    (``stop()`` first to end it early)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def result(self) -> Any:
        out, _ = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, out
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Watcher(JsonChild):
    """``watch`` in a child process for ``seconds``."""

    def __init__(self, seconds: float, targets: dict[str, str]) -> None:
        super().__init__(
            "bench.stalls", "watch", "--seconds", str(seconds),
            *(f"{name}={url}" for name, url in targets.items()),
        )  # fmt: skip

    def result(self) -> dict[str, Any]:
        parsed: dict[str, Any] = super().result()
        return parsed


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stalls")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe", help="run a service module with a loop-served endpoint")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("module")
    p.add_argument("args", nargs=argparse.REMAINDER)
    w = sub.add_parser("watch", help="poll URLs every 10 ms, print the gaps as JSON")
    w.add_argument("--seconds", type=float, required=True)
    w.add_argument("targets", nargs="+", help="name=http://127.0.0.1:PORT/path")
    args = parser.parse_args(argv)
    if args.command == "probe":
        probe(args.port, args.module, args.args)
        return
    import uvloop

    targets = dict(t.split("=", 1) for t in args.targets)
    print(json.dumps(uvloop.run(watch(args.seconds, targets))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
