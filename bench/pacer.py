"""An open-loop HTTP/1.1 client light enough not to be what it measures.

On two cores the client shares the CPU with everything it measures: aiohttp's client
spent ~150 µs of CPU per signed webhook in the latency soak (a sixth of a core at
1,000/s, beside an equally busy sink), and the machine ran at 93 % busy at a third of
its capacity, so run-queue waits, not Hookstream, set the tail. This client keeps only
what an open-loop pacer needs: keep-alive connections as ``asyncio.Protocol`` objects,
each request written as one prepared byte string, and answers parsed just far enough
to read the status and the body (``Content-Length`` framing; ingest answers that way).

A connection carries one request at a time; when every open one is busy a new one is
opened, so a slow answer never delays the next request (open loop). Idle connections are
closed before the server's own keep-alive timeout (uvicorn's 5 s) could close them under
a request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

from tests.support.rawhttp import head_fields

IDLE_S = 2.0

# (slot, status, body) once an answer is read; (slot, None, reason) when the connection
# failed under the request.
Answer = Callable[[int, int | None, bytes], None]


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_answer",
        "_body_at",
        "_buffer",
        "_need",
        "_pool",
        "_slot",
        "_status",
        "_transport",
        "idle_since",
    )

    def __init__(self, pool: Pacer, answer: Answer) -> None:
        self._pool = pool
        self._answer = answer
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._slot = -1
        # Once an answer's head has been read: its status, where its body starts, and
        # the bytes of the whole answer.
        self._status = 0
        self._body_at = 0
        self._need = -1
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport; they behave as one.
        self._transport = cast(asyncio.Transport, transport)

    def send(self, slot: int, request: bytes) -> None:
        assert self._transport is not None
        self._slot = slot
        self._transport.write(request)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if self._need < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            start, fields = head_fields(bytes(buffer[:end]))
            if b"content-length" not in fields:
                raise ValueError(f"an answer without Content-Length: {start!r}")
            self._status = int(start[9:12])
            self._body_at = end + 4
            self._need = self._body_at + int(fields[b"content-length"])
        if len(buffer) < self._need:
            return
        body = bytes(buffer[self._body_at : self._need])
        del buffer[: self._need]
        self._need = -1
        slot, self._slot = self._slot, -1
        self._answer(slot, self._status, body)
        self._pool.release(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._pool.forget(self)
        if self._slot >= 0:
            slot, self._slot = self._slot, -1
            self._answer(slot, None, f"connection lost: {exc!r}".encode())


class Pacer:
    """Keep-alive connections to one loopback port; ``send`` never waits for an answer."""

    def __init__(self, port: int, answer: Answer) -> None:
        self._port = port
        self._answer = answer
        self._idle: list[_Connection] = []  # last used on top
        self._open: set[_Connection] = set()
        self._opening: set[asyncio.Task[None]] = set()

    def send(self, slot: int, request: bytes) -> None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < IDLE_S:
                conn.send(slot, request)
                return
            conn.close()
        task = asyncio.get_running_loop().create_task(self._open_and_send(slot, request))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _open_and_send(self, slot: int, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(self, self._answer), "127.0.0.1", self._port
            )
        except OSError as exc:
            self._answer(slot, None, f"connect failed: {exc!r}".encode())
            return
        self._open.add(conn)
        conn.send(slot, request)

    def release(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    async def drain(self) -> None:
        """Until every connection being opened has sent its request."""
        while self._opening:
            await asyncio.gather(*self._opening)

    def close(self) -> None:
        for conn in list(self._open):
            conn.close()
