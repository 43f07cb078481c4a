"""Reading an ingest body: bounded in size, kept as the exact bytes, checked to be JSON."""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.ingest.errors import BadRequest, InvalidJSON, PayloadTooLarge, error_response


def check_declared_length(declared: bytes | None, limit: int) -> None:
    """Refuse an oversized body by its Content-Length, before reading a byte of it."""
    if declared is None:
        return
    if not declared.isdigit():
        raise BadRequest("invalid Content-Length")
    if int(declared) > limit:
        raise PayloadTooLarge(limit)


def check_content_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    check_declared_length(declared.encode("latin-1") if declared is not None else None, limit)


async def receive_body(receive: Receive, limit: int) -> bytes:
    """The raw body, at most ``limit`` bytes; a chunked upload is cut off at the limit.

    Callers check the declared Content-Length first (``check_declared_length``). Raises
    ClientDisconnect when the client goes away mid-body.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    """The decoded payload, or InvalidJSON.

    orjson first (fast); it refuses lone surrogates, which are valid JSON, so those few
    bodies go through the stdlib parser, minus the NaN and Infinity it would let through.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body.decode(), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidJSON() from None


def legacy_payload(body: bytes) -> Any:
    """The payload as the original service saw it (stdlib ``json``), for its signature form.

    Not orjson's value: orjson turns integers beyond 64 bits into floats, and
    ``json.dumps`` of those differs from what the original signed. Returns None when
    the stdlib cannot decode it either (the legacy form then cannot match).
    """
    try:
        return json.loads(body.decode(), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


class _TooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


class BodyLimitMiddleware:
    """HOOKSTREAM_MAX_BODY_BYTES for the routes FastAPI parses (management, tools, /events).

    ``/ingest/`` is left alone: it reads its own body with the same limit (``read_body``)
    and its hot path should not pay for a second count.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/ingest/"):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.limit:
                    await error_response(413, _TooLarge(self.limit).detail)(scope, receive, send)
                    return
                break
        limit = self.limit
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge(limit)
            return message

        await self.app(scope, limited, send)


class HeaderLimitMiddleware:
    """HOOKSTREAM_MAX_HEADER_BYTES over every route: 431 before any handler runs.

    uvicorn's httptools parser has no header limit of its own; without this a client could
    make every route (and the log context) carry megabytes of headers.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) for name, value in scope["headers"])
            if size > self.limit:
                detail = f"request headers are larger than {self.limit} bytes"
                await error_response(431, detail)(scope, receive, send)
                return
        await self.app(scope, receive, send)
