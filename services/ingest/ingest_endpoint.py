"""``POST /ingest/{subscription_id}``: the hot route, served as plain ASGI in front of FastAPI.

Budget (2 cores, wrk -c32): a bare FastAPI handler costs ~95 µs of CPU per request, and
the issue asks for at least 60 % of its throughput with a broker ack included, i.e. about
150 µs for everything. Measured in-process, FastAPI's request machinery for this route
(dependency solving, Request objects, exception wrappers, routing through an included
router) took ~45 µs of it, and declaring the three headers as FastAPI parameters another
~90 µs. So ``IngestFastPath`` answers ``POST /ingest/<id>`` itself: one pass over the raw
headers, the body read from ``receive`` with the size limit, the core call, two ``send``
messages. Everything else goes on to FastAPI.

The route is also registered with FastAPI, with the same behaviour, so that OpenAPI
documents its path, headers, body and every answer, and so the app stays correct if the
middleware is ever left out.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import FastAPI, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from services.ingest.errors import HookstreamError, Unprocessable, error_response, error_responses
from services.ingest.ingestion import (
    DEFAULT_EVENT_TYPE,
    EVENT_TYPE_PATTERN,
    MAX_CONTENT_TYPE,
    MAX_EVENT_TYPE,
    MAX_IDEMPOTENCY_KEY,
    Answer,
    Ingestion,
    count_answer,
    count_error,
)
from services.ingest.request_body import check_declared_length, receive_body
from services.ingest.resources import from_request
from services.ingest.schemas import Accepted, Filtered

PATH_PREFIX = "/ingest/"
_PATH_TEMPLATE = PATH_PREFIX + "{subscription_id}"
_JSON = (b"content-type", b"application/json")
_REPLAYED = (b"idempotent-replayed", b"true")


class IngestHeaders:
    """The headers ingest reads, from one pass over the raw ASGI header list."""

    __slots__ = ("content_length", "content_type", "event_type", "idempotency_key", "signature")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.signature: str | None = None
        self.event_type = DEFAULT_EVENT_TYPE
        self.content_type = "application/json"
        self.idempotency_key: str | None = None
        self.content_length: bytes | None = None
        for name, value in raw:
            if name == b"x-hub-signature-256":
                self.signature = value.decode("latin-1")
            elif name == b"x-webhook-event":
                self.event_type = _event_type(value)
            elif name == b"content-type":
                self.content_type = _bounded(value, "content-type", MAX_CONTENT_TYPE)
            elif name == b"idempotency-key":
                self.idempotency_key = _bounded(value, "idempotency-key", MAX_IDEMPOTENCY_KEY)
            elif name == b"content-length":
                self.content_length = value


def _bounded(value: bytes, header: str, limit: int) -> str:
    if not 0 < len(value) <= limit:
        raise Unprocessable(["header", header], f"must be 1 to {limit} characters")
    return value.decode("latin-1")


def _event_type(value: bytes) -> str:
    """Printable ASCII (space allowed): the type travels in a Kafka header and back out in
    an HTTP header, and only ASCII survives both byte for byte. Anything else is a 422
    rather than mojibake at the target."""
    if not value.isascii() or not value.decode("ascii").isprintable():
        raise Unprocessable(["header", "x-webhook-event"], "must be printable ASCII")
    return _bounded(value, "x-webhook-event", MAX_EVENT_TYPE)


def _subscription_id(path: str) -> uuid.UUID:
    try:
        return uuid.UUID(path[len(PATH_PREFIX) :])
    except ValueError:
        raise Unprocessable(["path", "subscription_id"], "must be a UUID") from None


async def handle_ingest(
    ingestion: Ingestion, scope: Scope, receive: Receive
) -> tuple[Answer, bool]:
    """Decode the request, run the core, count the outcome. Raises HookstreamError."""
    try:
        subscription_id = _subscription_id(scope["path"])
        headers = IngestHeaders(scope["headers"])
        check_declared_length(headers.content_length, ingestion.max_body_bytes)
        sub = await ingestion.subscription(subscription_id)
        body = await receive_body(receive, ingestion.max_body_bytes)
        answer, replayed = await ingestion.targeted(
            sub,
            body,
            signature=headers.signature,
            event_type=headers.event_type,
            content_type=headers.content_type,
            idempotency_key=headers.idempotency_key,
        )
    except HookstreamError as exc:
        count_error("ingest", exc)
        raise
    count_answer("ingest", answer, replayed)
    return answer, replayed


def _is_ingest(scope: Scope) -> bool:
    if scope["type"] != "http" or scope["method"] != "POST":
        return False
    path: str = scope["path"]
    # What the route template matches: exactly one non-empty segment after the prefix.
    return (
        path.startswith(PATH_PREFIX)
        and "/" not in path[len(PATH_PREFIX) :]
        and (len(path) > len(PATH_PREFIX))
    )


class IngestFastPath:
    """Serves ``POST /ingest/<id>`` without FastAPI's routing; passes everything else on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_ingest(scope):
            await self.app(scope, receive, send)
            return
        ingestion: Ingestion = scope["state"]["resources"].ingestion
        try:
            (status, body), replayed = await handle_ingest(ingestion, scope, receive)
        except HookstreamError as exc:
            await error_response(exc.status_code, exc.detail, exc.headers)(scope, receive, send)
            return
        except ClientDisconnect:
            return  # nobody is left to answer
        headers = [_JSON, (b"content-length", b"%d" % len(body))]
        if replayed:
            headers.append(_REPLAYED)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# --- the FastAPI route: documentation, and the same behaviour without the fast path --------

_DOCS: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Any JSON document, at most HOOKSTREAM_MAX_BODY_BYTES. It is stored "
        "and delivered byte for byte as received.",
        "content": {"application/json": {"schema": {}}},
    },
    "parameters": [
        {
            "name": "subscription_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "format": "uuid"},
            "description": "a malformed id is a 422, an unknown one a 404",
        },
        {
            "name": "x-hub-signature-256",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "`sha256=<hex HMAC-SHA256 of the raw body>` with the subscription's "
            "secret; required when it has one. An HMAC over Python's `json.dumps(payload)` "
            "(default separators) is also accepted, for clients of the original service.",
        },
        {
            "name": "x-webhook-event",
            "in": "header",
            "required": False,
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_EVENT_TYPE,
                "pattern": EVENT_TYPE_PATTERN,
            },
            "description": f"the event type; `{DEFAULT_EVENT_TYPE}` when absent",
        },
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
            "description": "A repeat within HOOKSTREAM_IDEMPOTENCY_TTL returns the first answer "
            "and publishes nothing; a repeat while the first is in flight gets 409.",
        },
    ],
}

REPLAYED_HEADER_DOC = {
    "Idempotent-Replayed": {
        "schema": {"type": "string"},
        "description": "`true` when this is the stored answer to an earlier request",
    }
}


async def ingest(request: Request) -> Response:
    """Authenticated by the subscription's signature, not by the API key."""
    (status, body), replayed = await handle_ingest(
        from_request(request).ingestion, request.scope, request.receive
    )
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def add_ingest_route(app: FastAPI) -> None:
    """The fast path in front, the documented FastAPI route behind it."""
    app.add_middleware(IngestFastPath)
    app.add_api_route(
        _PATH_TEMPLATE,
        ingest,
        methods=["POST"],
        tags=["ingestion"],
        summary="Receive a signed webhook for one subscription",
        status_code=202,
        response_model=Accepted,
        responses={
            202: {"description": "Acknowledged by the broker", "headers": REPLAYED_HEADER_DOC},
            200: {
                "model": Filtered,
                "description": "Not delivered: the subscription is inactive or does not take "
                "this event type. Nothing is published.",
                "headers": REPLAYED_HEADER_DOC,
            },
            **error_responses(400, 401, 404, 409, 413, 422, 503),
        },
        openapi_extra=_DOCS,
    )
