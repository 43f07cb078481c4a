"""``POST /events`` and ``POST /applications/{app}/events`` (API key): one event, fanned
out by the dispatcher to every matching subscription of one application.

``POST /events`` acts on the caller's application: the ``default`` one for the operator
key (single-tenant users never name an application), the key's own for a scoped key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from starlette.responses import Response

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
from services.ingest.tenancy import AppTenant, Caller, Tenant

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


EventType = Annotated[
    str,
    Header(
        alias="x-webhook-event",
        min_length=1,
        max_length=MAX_EVENT_TYPE,
        pattern=EVENT_TYPE_PATTERN,
        description="the event type subscriptions are matched on (printable ASCII)",
    ),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY,
        description="A repeat within HOOKSTREAM_IDEMPOTENCY_TTL returns the first answer "
        "and publishes nothing; a repeat while the first is in flight gets 409.",
    ),
]
_ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {"description": "Acknowledged by the broker", "headers": REPLAYED_HEADER_DOC}
}


@router.post(
    "/events",
    summary="Publish an event to every active subscription that takes its type (in the "
    "default application, or in the key's own)",
    status_code=202,
    response_model=EventAccepted,
    responses={**_ACCEPTED, **error_responses(400, 401, 409, 413, 422, 503)},
    openapi_extra=_JSON_BODY,
)
async def publish_event(
    request: Request,
    tenant: Caller,
    x_webhook_event: EventType,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await _publish(request, tenant, x_webhook_event, idempotency_key)


@router.post(
    "/applications/{app}/events",
    summary="Publish an event to this application's subscriptions that take its type",
    status_code=202,
    response_model=EventAccepted,
    responses={**_ACCEPTED, **error_responses(400, 401, 404, 409, 413, 422, 503)},
    openapi_extra=_JSON_BODY,
    tags=["applications"],
)
async def publish_application_event(
    request: Request,
    tenant: AppTenant,
    x_webhook_event: EventType,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await _publish(request, tenant, x_webhook_event, idempotency_key)


async def _publish(
    request: Request, tenant: Tenant, event_type: str, idempotency_key: str | None
) -> Response:
    ingestion = from_request(request).ingestion
    try:
        check_content_length(request, ingestion.max_body_bytes)
        body = await receive_body(request.receive, ingestion.max_body_bytes)
        answer, replayed = await ingestion.fanout(
            body,
            application_id=tenant.creates_in,
            event_type=event_type,
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
