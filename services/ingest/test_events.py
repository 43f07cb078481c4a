"""Test events: an example event delivered to one subscription only, whatever event
types and filter it has, with trigger ``test`` on its attempts (``POST
/subscriptions/{id}/test`` and the portal's "send a test event").

The record carries ``trigger=test``; the dispatcher's fan-out lets such a targeted record
through to its subscription without re-checking types or filter. Only ingest's own code
sets a trigger: nothing a producer sends can.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request

from services.ingest.errors import Conflict, error_responses
from services.ingest.resources import Resources, from_request
from services.ingest.schemas import TestEventAccepted, TestEventRequest
from services.ingest.subscriptions import get_subscription
from services.ingest.tenancy import Caller, Tenant
from shared.logging import get_logger
from shared.records import TEST_EVENT_TYPE, TEST_TRIGGER, EventRecord, delivery_id_for

log = get_logger("ingest.test_events")


def sample_payload(sent_at: datetime, event_type: str = TEST_EVENT_TYPE) -> bytes:
    return orjson.dumps(
        {
            "type": event_type,
            "message": "A test event from Hookstream. No action is needed.",
            "sent_at": sent_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }
    )


async def send_test_event(
    res: Resources,
    tenant: Tenant,
    subscription_id: uuid.UUID,
    event_type: str = TEST_EVENT_TYPE,
) -> tuple[uuid.UUID, uuid.UUID]:
    """Publish an example event to one subscription; (event id, delivery id). NotFound for
    another application's subscription, Conflict for an inactive one."""
    async with tenant.session() as session:
        sub = await get_subscription(session, subscription_id)
    if not sub.is_active:
        raise Conflict("this subscription is inactive: activate it to send it a test event")
    now = datetime.now(UTC)
    record = EventRecord(
        event_id=uuid.uuid4(),
        event_type=event_type,
        received_at=now,
        content_type="application/json",
        body=sample_payload(now, event_type),
        subscription_id=sub.id,
        application_id=sub.application_id,
        trigger=TEST_TRIGGER,
    )
    await res.publisher.publish_event(res.topics.events, record)
    return record.event_id, delivery_id_for(record.event_id, sub.id)


router = APIRouter(prefix="/subscriptions", tags=["subscriptions"])


@router.post(
    "/{subscription_id}/test",
    status_code=202,
    response_model=TestEventAccepted,
    summary="Send an example event to this subscription only (trigger test), whatever its "
    "event types and filter",
    responses=error_responses(400, 401, 404, 409, 422, 503),
)
async def send_test(
    subscription_id: uuid.UUID,
    tenant: Caller,
    request: Request,
    data: TestEventRequest | None = None,
) -> Any:
    event_type = data.event_type if data is not None else TEST_EVENT_TYPE
    event_id, delivery_id = await send_test_event(
        from_request(request), tenant, subscription_id, event_type
    )
    log.info("test event sent", subscription_id=str(subscription_id), **tenant.log_fields())
    return TestEventAccepted(
        status="accepted",
        event_id=event_id,
        delivery_id=delivery_id,
        event_type=event_type,
        message="an example event is on its way to this subscription (trigger test)",
    )
