"""``POST /events`` (API key): one event, fanned out by the dispatcher to every match."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from starlette.responses import Response

from services.ingest.auth import require_api_key
from services.ingest.errors import HookstreamError, Unprocessable, error_responses
from services.ingest.ingest_endpoint import REPLAYED_HEADER_DOC
from services.ingest.ingestion import (
    EVENT_TYPE_PATTERN,
    MAX_CONTENT_TYPE,
    MAX_EVENT_TYPE,
    MAX_IDEMPOTENCY_KEY,
    count_answer,
    count_error,
)
from services.ingest.request_body import check_content_length, receive_body
from services.ingest.resources import from_request
from services.ingest.schemas import EventAccepted

router = APIRouter(tags=["ingestion"])

_JSON_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Any JSON document, at most HOOKSTREAM_MAX_BODY_BYTES, delivered byte "
        "for byte to every active subscription that takes this event type.",
        "content": {"application/json": {"schema": {}}},
    }
}


def _content_type(request: Request) -> str:
    value = request.headers.get("content-type") or "application/json"
    if len(value) > MAX_CONTENT_TYPE:
        raise Unprocessable(["header", "content-type"], "too long")
    return value


@router.post(
    "/events",
    summary="Publish an event to every active subscription that takes its type",
    status_code=202,
    response_model=EventAccepted,
    dependencies=[Depends(require_api_key)],
    responses={
        202: {"description": "Acknowledged by the broker", "headers": REPLAYED_HEADER_DOC},
        **error_responses(400, 401, 409, 413, 422, 503),
    },
    openapi_extra=_JSON_BODY,
)
async def publish_event(
    request: Request,
    x_webhook_event: Annotated[
        str,
        Header(
            alias="x-webhook-event",
            min_length=1,
            max_length=MAX_EVENT_TYPE,
            pattern=EVENT_TYPE_PATTERN,
            description="the event type subscriptions are matched on (printable ASCII)",
        ),
    ],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=MAX_IDEMPOTENCY_KEY,
            description="A repeat within HOOKSTREAM_IDEMPOTENCY_TTL returns the first answer "
            "and publishes nothing; a repeat while the first is in flight gets 409.",
        ),
    ] = None,
) -> Response:
    ingestion = from_request(request).ingestion
    try:
        check_content_length(request, ingestion.max_body_bytes)
        body = await receive_body(request.receive, ingestion.max_body_bytes)
        answer, replayed = await ingestion.fanout(
            body,
            event_type=x_webhook_event,
            content_type=_content_type(request),
            idempotency_key=idempotency_key,
        )
    except HookstreamError as exc:
        count_error("events", exc)
        raise
    count_answer("events", answer, replayed)
    status, payload = answer
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return Response(payload, status_code=status, headers=headers, media_type="application/json")
