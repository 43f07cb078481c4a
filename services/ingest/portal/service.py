"""What the portal does that the API has no route for: test events, through the portal's
tenant (``tenancy.Tenant``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson

from services.ingest.errors import Conflict
from services.ingest.resources import Resources
from services.ingest.subscriptions import get_subscription
from services.ingest.tenancy import Tenant
from shared.records import TEST_EVENT_TYPE, EventRecord, delivery_id_for


def sample_payload(sent_at: datetime) -> bytes:
    return orjson.dumps(
        {
            "type": TEST_EVENT_TYPE,
            "message": "A test event from the webhooks portal. No action is needed.",
            "sent_at": sent_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }
    )


async def send_test_event(res: Resources, tenant: Tenant, subscription_id: uuid.UUID) -> uuid.UUID:
    """Publish a ``hookstream.test`` event to one endpoint, whatever event types it lists;
    its delivery id. NotFound for another application's endpoint, Conflict for a disabled one."""
    async with tenant.session() as session:
        sub = await get_subscription(session, subscription_id)
    if not sub.is_active:
        raise Conflict("this endpoint is disabled: enable it to send it a test event")
    now = datetime.now(UTC)
    record = EventRecord(
        event_id=uuid.uuid4(),
        event_type=TEST_EVENT_TYPE,
        received_at=now,
        content_type="application/json",
        body=sample_payload(now),
        subscription_id=sub.id,
        application_id=sub.application_id,
    )
    await res.publisher.publish_event(res.topics.events, record)
    return delivery_id_for(record.event_id, sub.id)
