"""Manual redelivery: retry one delivery, or replay a subscription's dead letters.

Both publish a fresh ``DeliveryJob`` (attempt 1, same ``delivery_id``) to the deliveries
topic; the dispatcher then runs a new attempt series and its rows carry the trigger
(``manual-retry`` or ``replay``), so the status endpoints show who caused them. The body
comes from the ``events`` table, written by the dispatcher at fan-out; once the event is
past retention there is nothing left to send (410).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.ingest.errors import (
    Conflict,
    HookstreamError,
    NotFound,
    Unprocessable,
    error_responses,
)
from services.ingest.resources import Resources, from_request
from services.ingest.schemas import RFC3339, RedeliveryAccepted, ReplayAccepted
from services.ingest.tenancy import Caller, Tenant
from shared.models import AttemptStatus, DeliveryAttempt, Event, Subscription
from shared.records import DeliveryJob

# One replay call re-sends at most this many deliveries; call again with a later `since`.
MAX_REPLAY = 1000
DEFAULT_REPLAY_WINDOW = timedelta(hours=24)


class Gone(HookstreamError):
    status_code = 410
    default_detail = "the event's body is past retention: there is nothing left to deliver"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event_id: uuid.UUID
    event_type: str
    received_at: datetime
    content_type: str
    body: bytes


async def stored_event(session: AsyncSession, event_id: uuid.UUID) -> StoredEvent | None:
    """The event as stored at fan-out (body included); None once it is past retention."""
    row = (
        await session.execute(
            select(Event.event_type, Event.received_at, Event.content_type, Event.body)
            .where(Event.id == event_id)
            .limit(1)
        )
    ).one_or_none()
    return None if row is None else StoredEvent(event_id, *row)


def _job(
    delivery_id: uuid.UUID, sub: Subscription, event: StoredEvent, trigger: str
) -> DeliveryJob:
    return DeliveryJob(
        delivery_id=delivery_id,
        event_id=event.event_id,
        subscription_id=sub.id,
        application_id=sub.application_id,
        event_type=event.event_type,
        attempt=1,
        first_received_at=event.received_at,
        content_type=event.content_type,
        body=event.body,
        trigger=trigger,
        # A run of its own: its retries must not be taken for copies of an earlier run's.
        run=uuid.uuid4().hex,
    )


async def _deliverable(session: AsyncSession, subscription_id: uuid.UUID) -> Subscription:
    sub = await session.get(Subscription, subscription_id)
    if sub is None:
        raise NotFound("subscription not found")
    if not sub.is_active:
        raise Conflict("subscription is inactive: reactivate it first (PATCH is_active=true)")
    return sub


async def retry_delivery(res: Resources, tenant: Tenant, delivery_id: uuid.UUID) -> DeliveryJob:
    async with tenant.session() as session:
        latest = (
            await session.execute(
                select(
                    DeliveryAttempt.event_id,
                    DeliveryAttempt.subscription_id,
                    DeliveryAttempt.status,
                )
                .where(DeliveryAttempt.delivery_id == delivery_id)
                .order_by(DeliveryAttempt.created_at.desc())
                .limit(1)
            )
        ).one_or_none()
        if latest is None:
            raise NotFound("no attempts recorded for this delivery")
        event_id, sub_id, status = latest
        if status == AttemptStatus.FAILED_ATTEMPT:
            raise Conflict(
                "this delivery is still being retried; retry it by hand once it has ended",
                headers={"Retry-After": "60"},
            )
        sub = await _deliverable(session, sub_id)
        event = await stored_event(session, event_id)
    if event is None:
        raise Gone()
    job = _job(delivery_id, sub, event, "manual-retry")
    await res.publisher.publish_job(res.topics.deliveries, job)
    return job


async def replay_failures(
    res: Resources, tenant: Tenant, subscription_id: uuid.UUID, since: datetime
) -> tuple[list[uuid.UUID], int]:
    """Re-send the deliveries whose latest attempt since ``since`` is FAILURE."""
    latest = (
        select(
            DeliveryAttempt.delivery_id,
            DeliveryAttempt.event_id,
            DeliveryAttempt.status,
        )
        .where(
            DeliveryAttempt.subscription_id == subscription_id,
            DeliveryAttempt.created_at >= since,
        )
        .distinct(DeliveryAttempt.delivery_id)
        .order_by(DeliveryAttempt.delivery_id, DeliveryAttempt.created_at.desc())
        .subquery()
    )
    async with tenant.session() as session:
        sub = await _deliverable(session, subscription_id)
        failed = (
            await session.execute(
                select(latest.c.delivery_id, latest.c.event_id)
                .where(latest.c.status == AttemptStatus.FAILURE.value)
                .limit(MAX_REPLAY)
            )
        ).all()
        events = {
            e.event_id: e for e in [await stored_event(session, eid) for _, eid in failed] if e
        }
    jobs = [
        _job(delivery_id, sub, events[event_id], "replay")
        for delivery_id, event_id in failed
        if event_id in events
    ]
    await asyncio.gather(*(res.publisher.publish_job(res.topics.deliveries, job) for job in jobs))
    return [job.delivery_id for job in jobs], len(failed) - len(jobs)


def parse_since(value: str | None) -> datetime:
    """An RFC 3339 date-time with its offset, as documented (pydantic would also take a
    bare number as a Unix time, or a date alone)."""
    if value is None:
        return datetime.now(UTC) - DEFAULT_REPLAY_WINDOW
    if RFC3339.fullmatch(value):
        try:
            return datetime.fromisoformat(value.upper())
        except ValueError:
            pass  # e.g. month 13
    raise Unprocessable(
        ["query", "since"], "must be an RFC 3339 date-time, e.g. 2026-01-31T12:00:00Z"
    )


# --- HTTP ---------------------------------------------------------------------------

router = APIRouter(prefix="/status", tags=["status"])

_ERRORS = error_responses(401, 404, 409, 422, 503)
_ERRORS[410] = {"description": "The event's body is past retention", "model": _ERRORS[404]["model"]}


@router.post(
    "/deliveries/{delivery_id}/retry",
    status_code=202,
    response_model=RedeliveryAccepted,
    summary="Deliver again: a fresh attempt series for one delivery (trigger manual-retry)",
    responses=_ERRORS,
)
async def retry(delivery_id: uuid.UUID, request: Request, tenant: Caller) -> Any:
    job = await retry_delivery(from_request(request), tenant, delivery_id)
    return RedeliveryAccepted(
        status="accepted",
        delivery_id=job.delivery_id,
        event_id=job.event_id,
        subscription_id=job.subscription_id,
        trigger="manual-retry",
        message="a new attempt series is queued for this delivery",
    )


@router.post(
    "/subscriptions/{subscription_id}/replay",
    status_code=202,
    response_model=ReplayAccepted,
    summary="Re-send a subscription's FAILURE deliveries since a time (trigger replay)",
    responses=_ERRORS,
)
async def replay(
    subscription_id: uuid.UUID,
    request: Request,
    tenant: Caller,
    since: Annotated[
        str | None,
        Query(
            description="RFC 3339 date-time with offset (e.g. 2026-01-31T12:00:00Z); "
            "deliveries that failed at or after it. Default: 24 hours ago.",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
) -> Any:
    start = parse_since(since)
    replayed, expired = await replay_failures(from_request(request), tenant, subscription_id, start)
    return ReplayAccepted(
        status="accepted",
        subscription_id=subscription_id,
        since=start,
        replayed=len(replayed),
        expired=expired,
        delivery_ids=replayed,
        message=f"{len(replayed)} failed deliveries queued again",
    )
