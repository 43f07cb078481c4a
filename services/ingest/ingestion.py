"""Ingestion: ``POST /ingest/{subscription_id}`` (signed, targeted) and ``POST /events`` (fan-out).

The hot path does no database query (subscriptions come from the in-process cache) and
awaits nothing but the broker's ack: the response is 202 only once the record is on the
topic (design §1). The record carries the exact body bytes; ``delivery_id`` is fixed here
as ``uuid5(event_id, subscription_id)``, so the 202 names the ``webhook-id`` the target
will see.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Request
from starlette.responses import Response

from services.ingest.auth import require_api_key
from services.ingest.errors import (
    HookstreamError,
    InvalidSignature,
    NotFound,
    Unprocessable,
    error_responses,
)
from services.ingest.idempotency import Claim, IdempotencyStore, StoredAnswer, fingerprint
from services.ingest.publishing import Publisher
from services.ingest.request_body import (
    check_content_length,
    legacy_payload,
    parse_json,
    read_body,
)
from services.ingest.schemas import Accepted, EventAccepted, Filtered
from shared.metrics import INGESTED
from shared.records import EventRecord, delivery_id_for
from shared.settings import Settings
from shared.signing import verify_hub_signature
from shared.subscriptions import SubscriptionCache, SubscriptionView
from shared.topics import Topics

# A webhook without ``x-webhook-event`` gets this type: it reaches subscriptions that
# take every type, and is filtered for those that list theirs.
DEFAULT_EVENT_TYPE = "webhook"
_MAX_CONTENT_TYPE = 255  # events.content_type is varchar(255)

Answer = tuple[int, bytes]

_OUTCOMES = {
    (route, outcome): INGESTED.labels(route, outcome)
    for route in ("ingest", "events")
    for outcome in ("accepted", "filtered", "rejected", "unavailable", "replayed")
}


class Ingestion:
    """The ingest core: decide, publish, answer. Routes only decode and encode."""

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        cache: SubscriptionCache,
        publisher: Publisher,
        idempotency: IdempotencyStore,
    ) -> None:
        self.max_body_bytes = settings.max_body_bytes
        self.cache = cache
        self._events_topic = topics.events
        self._publisher = publisher
        self._idempotency = idempotency

    async def subscription(self, subscription_id: uuid.UUID) -> SubscriptionView:
        sub = await self.cache.get(subscription_id)
        if sub is None:
            raise NotFound("subscription not found")
        return sub

    async def targeted(
        self,
        sub: SubscriptionView,
        body: bytes,
        *,
        signature: str | None,
        event_type: str,
        content_type: str,
        idempotency_key: str | None,
    ) -> tuple[Answer, bool]:
        """``POST /ingest/{id}``: returns ((status, body), replayed)."""
        parse_json(body)
        if sub.secret_key is not None and not _signed(sub.secret_key, body, signature):
            raise InvalidSignature()

        if idempotency_key is None:
            return await self._deliver(sub, body, event_type, content_type), False
        return await _once(
            self._idempotency,
            f"sub:{sub.id}",
            idempotency_key,
            event_type,
            body,
            partial(self._deliver, sub, body, event_type, content_type),
        )

    async def _deliver(
        self, sub: SubscriptionView, body: bytes, event_type: str, content_type: str
    ) -> Answer:
        if not sub.is_active:
            return _filtered("subscription_inactive", "subscription is inactive")
        if not sub.wants(event_type):
            return _filtered(
                "event_type_not_subscribed", f"event type {event_type!r} is not subscribed"
            )
        event_id = uuid.uuid4()
        record = EventRecord(
            event_id=event_id,
            event_type=event_type,
            received_at=datetime.now(UTC),
            content_type=content_type,
            body=body,
            subscription_id=sub.id,
        )
        await self._publisher.publish_event(self._events_topic, record)
        return 202, orjson.dumps(
            {
                "status": "accepted",
                "delivery_id": delivery_id_for(event_id, sub.id),
                "event_id": event_id,
                "message": "webhook accepted for delivery",
            }
        )

    async def fanout(
        self,
        body: bytes,
        *,
        event_type: str,
        content_type: str,
        idempotency_key: str | None,
    ) -> tuple[Answer, bool]:
        """``POST /events``: one record; the dispatcher fans it out to matching subscriptions."""
        parse_json(body)

        if idempotency_key is None:
            return await self._publish_fanout(body, event_type, content_type), False
        return await _once(
            self._idempotency,
            "events",
            idempotency_key,
            event_type,
            body,
            partial(self._publish_fanout, body, event_type, content_type),
        )

    async def _publish_fanout(self, body: bytes, event_type: str, content_type: str) -> Answer:
        record = EventRecord(
            event_id=uuid.uuid4(),
            event_type=event_type,
            received_at=datetime.now(UTC),
            content_type=content_type,
            body=body,
        )
        await self._publisher.publish_event(self._events_topic, record)
        return 202, orjson.dumps(
            {
                "status": "accepted",
                "event_id": record.event_id,
                "message": "event accepted for fan-out to matching subscriptions",
            }
        )


def _signed(secret: str, body: bytes, signature: str | None) -> bool:
    """Over the raw body; failing that, over ``json.dumps(payload)`` as the original signed."""
    if verify_hub_signature(secret, body, signature):
        return True
    if not signature:
        return False
    payload = legacy_payload(body)
    return payload is not None and verify_hub_signature(secret, body, signature, payload)


def _filtered(reason: str, message: str) -> Answer:
    return 200, orjson.dumps({"status": "filtered", "reason": reason, "message": message})


async def _once(
    store: IdempotencyStore,
    scope: str,
    key: str,
    event_type: str,
    body: bytes,
    answer: Callable[[], Awaitable[Answer]],
) -> tuple[Answer, bool]:
    print_ = fingerprint(event_type, body)
    claim = await store.claim(scope, key, print_)
    if isinstance(claim, StoredAnswer):
        return (claim.status_code, claim.body), True
    return await _answer_and_store(store, claim, print_, answer), False


async def _answer_and_store(
    store: IdempotencyStore, claim: Claim, print_: str, answer: Callable[[], Awaitable[Answer]]
) -> Answer:
    try:
        result = await answer()
    except BaseException:
        # Errors are not remembered: a retry after a 503 must be allowed to publish.
        await store.release(claim)
        raise
    await store.store(claim, StoredAnswer(*result), print_)
    return result


# --- HTTP ---------------------------------------------------------------------------

router = APIRouter(tags=["ingestion"])

_JSON_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Any JSON document, at most HOOKSTREAM_MAX_BODY_BYTES. It is stored "
        "and delivered byte for byte as received.",
        "content": {"application/json": {"schema": {}}},
    }
}
_REPLAYED_HEADER = {
    "Idempotent-Replayed": {
        "schema": {"type": "string"},
        "description": "`true` when this is the stored answer to an earlier request",
    }
}

SignatureHeader = Annotated[
    str | None,
    Header(
        alias="x-hub-signature-256",
        description="`sha256=<hex HMAC-SHA256 of the raw body>` with the subscription's "
        "secret; required when it has one. An HMAC over Python's `json.dumps(payload)` "
        "(default separators) is also accepted, for clients of the original service.",
    ),
]
IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="A repeat within HOOKSTREAM_IDEMPOTENCY_TTL returns the first answer "
        "and publishes nothing; a repeat while the first is in flight gets 409.",
    ),
]


def _content_type(request: Request) -> str:
    value = request.headers.get("content-type") or "application/json"
    if len(value) > _MAX_CONTENT_TYPE:
        raise Unprocessable(["header", "content-type"], "too long")
    return value


def _respond(answer: Answer, replayed: bool) -> Response:
    status, body = answer
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _ingestion(request: Request) -> Ingestion:
    ingestion: Ingestion = request.state.resources.ingestion
    return ingestion


@router.post(
    "/ingest/{subscription_id}",
    summary="Receive a signed webhook for one subscription",
    status_code=202,
    response_model=Accepted,
    responses={
        202: {"description": "Acknowledged by the broker", "headers": _REPLAYED_HEADER},
        200: {
            "model": Filtered,
            "description": "Not delivered: the subscription is inactive or does not take "
            "this event type. Nothing is published.",
            "headers": _REPLAYED_HEADER,
        },
        **error_responses(400, 401, 404, 409, 413, 422, 503),
    },
    openapi_extra=_JSON_BODY,
)
async def ingest(
    request: Request,
    subscription_id: uuid.UUID,
    x_hub_signature_256: SignatureHeader = None,
    x_webhook_event: Annotated[
        str | None,
        Header(
            alias="x-webhook-event",
            min_length=1,
            max_length=200,
            description=f"the event type; `{DEFAULT_EVENT_TYPE}` when absent",
        ),
    ] = None,
    idempotency_key: IdempotencyHeader = None,
) -> Response:
    """Authenticated by signature, not by API key. A malformed id is a 422."""
    ingestion = _ingestion(request)
    try:
        check_content_length(request, ingestion.max_body_bytes)
        sub = await ingestion.subscription(subscription_id)
        body = await read_body(request, ingestion.max_body_bytes)
        answer, replayed = await ingestion.targeted(
            sub,
            body,
            signature=x_hub_signature_256,
            event_type=x_webhook_event or DEFAULT_EVENT_TYPE,
            content_type=_content_type(request),
            idempotency_key=idempotency_key,
        )
    except HookstreamError as exc:
        _count("ingest", exc)
        raise
    _OUTCOMES["ingest", _outcome(answer, replayed)].inc()
    return _respond(answer, replayed)


@router.post(
    "/events",
    summary="Publish an event to every active subscription that takes its type",
    status_code=202,
    response_model=EventAccepted,
    dependencies=[Depends(require_api_key)],
    responses={
        202: {"description": "Acknowledged by the broker", "headers": _REPLAYED_HEADER},
        **error_responses(400, 401, 409, 413, 422, 503),
    },
    openapi_extra=_JSON_BODY,
)
async def publish_event(
    request: Request,
    x_webhook_event: Annotated[str, Header(alias="x-webhook-event", min_length=1, max_length=200)],
    idempotency_key: IdempotencyHeader = None,
) -> Response:
    ingestion = _ingestion(request)
    try:
        body = await read_body(request, ingestion.max_body_bytes)
        answer, replayed = await ingestion.fanout(
            body,
            event_type=x_webhook_event,
            content_type=_content_type(request),
            idempotency_key=idempotency_key,
        )
    except HookstreamError as exc:
        _count("events", exc)
        raise
    _OUTCOMES["events", _outcome(answer, replayed)].inc()
    return _respond(answer, replayed)


def _outcome(answer: Answer, replayed: bool) -> str:
    if replayed:
        return "replayed"
    return "accepted" if answer[0] == 202 else "filtered"


def _count(route: str, exc: HookstreamError) -> None:
    _OUTCOMES[route, "unavailable" if exc.status_code >= 500 else "rejected"].inc()
