"""Status read side over PostgreSQL: what happened to a delivery, a subscription, an event.

Attempt rows are written by the dispatcher; the events table by its fan-out stage. A
delivery that was accepted but not yet attempted has no rows, so it is a 404 until its
first attempt is recorded.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from services.ingest.errors import NotFound, error_responses
from services.ingest.schemas import (
    AttemptOut,
    DeadLetter,
    DeadLetters,
    DeliveryStatus,
    EventDelivery,
    EventStatus,
    SubscriptionDeliveries,
)
from services.ingest.tenancy import Caller
from shared.models import AttemptStatus, DeliveryAttempt, Event, Subscription

# A delivery has at most max_attempts rows per series; manual retries and replays add
# series. 1000 rows is far past any real history and keeps one answer bounded.
MAX_LOGS = 1000


# --- core ---------------------------------------------------------------------------


async def delivery_status(session: AsyncSession, delivery_id: uuid.UUID) -> DeliveryStatus:
    rows = (
        (
            await session.execute(
                select(DeliveryAttempt)
                .where(DeliveryAttempt.delivery_id == delivery_id)
                .order_by(DeliveryAttempt.created_at, DeliveryAttempt.attempt_number)
                .limit(MAX_LOGS)
            )
        )
        .scalars()
        .all()
    )
    if not rows:
        raise NotFound("no attempts recorded for this delivery")
    logs = [AttemptOut.model_validate(r) for r in rows]
    latest = logs[-1]
    return DeliveryStatus(
        delivery_id=delivery_id,
        subscription_id=latest.subscription_id,
        event_id=latest.event_id,
        total_attempts=len(logs),
        latest_status=latest.status,
        latest_attempt=latest,
        logs=logs,
    )


async def subscription_deliveries(
    session: AsyncSession, subscription_id: uuid.UUID, limit: int
) -> SubscriptionDeliveries:
    status = DeliveryAttempt.status
    totals = (
        await session.execute(
            select(
                func.count(),
                func.count().filter(status == AttemptStatus.SUCCESS.value),
                func.count().filter(status == AttemptStatus.FAILURE.value),
                func.count().filter(status == AttemptStatus.FAILED_ATTEMPT.value),
            ).where(DeliveryAttempt.subscription_id == subscription_id)
        )
    ).one()
    total, success, failure, failed_attempts = (int(v) for v in totals)
    if total == 0 and await session.get(Subscription, subscription_id) is None:
        raise NotFound("subscription not found")
    recent = (
        (
            await session.execute(
                select(DeliveryAttempt)
                .where(DeliveryAttempt.subscription_id == subscription_id)
                .order_by(DeliveryAttempt.created_at.desc(), DeliveryAttempt.attempt_number.desc())
                .limit(limit)
            )
        )
        .scalars()
        .all()
    )
    return SubscriptionDeliveries(
        subscription_id=subscription_id,
        total_attempts=total,
        successful_deliveries=success,
        failed_deliveries=failure,
        failed_attempts=failed_attempts,
        recent_logs=[AttemptOut.model_validate(r) for r in recent],
    )


async def event_status(session: AsyncSession, event_id: uuid.UUID) -> EventStatus:
    event = (
        await session.execute(
            select(
                Event.event_type,
                Event.subscription_id,
                Event.received_at,
                Event.content_type,
                func.octet_length(Event.body),
            )
            .where(Event.id == event_id)
            .limit(1)
        )
    ).one_or_none()
    latest_status = func.array_agg(
        aggregate_order_by(DeliveryAttempt.status, DeliveryAttempt.created_at.desc())
    )[1]
    deliveries = (
        await session.execute(
            select(
                DeliveryAttempt.delivery_id,
                DeliveryAttempt.subscription_id,
                func.count(),
                latest_status,
                func.max(DeliveryAttempt.created_at),
            )
            .where(DeliveryAttempt.event_id == event_id)
            .group_by(DeliveryAttempt.delivery_id, DeliveryAttempt.subscription_id)
            .order_by(func.min(DeliveryAttempt.created_at))
            .limit(MAX_LOGS)
        )
    ).all()
    if event is None and not deliveries:
        raise NotFound("event not found")
    return EventStatus(
        event_id=event_id,
        event_type=event[0] if event else None,
        subscription_id=event[1] if event else None,
        received_at=event[2] if event else None,
        content_type=event[3] if event else None,
        size_bytes=event[4] if event else None,
        deliveries=[
            EventDelivery(
                delivery_id=d[0],
                subscription_id=d[1],
                total_attempts=d[2],
                latest_status=d[3],
                latest_attempt_at=d[4],
            )
            for d in deliveries
        ],
    )


async def dead_letters(
    session: AsyncSession, subscription_id: uuid.UUID | None, limit: int
) -> DeadLetters:
    """FAILURE rows that are still the latest word on their delivery, newest first.

    Walks FAILURE rows by time (ix_attempts_created_status) and skips any delivery with a
    later attempt (a manual retry or replay since), found through ix_attempts_delivery.
    """
    later = aliased(DeliveryAttempt)
    superseded = (
        select(later.id)
        .where(
            later.delivery_id == DeliveryAttempt.delivery_id,
            later.created_at > DeliveryAttempt.created_at,
        )
        .exists()
    )
    query = select(DeliveryAttempt).where(
        DeliveryAttempt.status == AttemptStatus.FAILURE.value, ~superseded
    )
    if subscription_id is not None:
        query = query.where(DeliveryAttempt.subscription_id == subscription_id)
    rows = (
        (await session.execute(query.order_by(DeliveryAttempt.created_at.desc()).limit(limit)))
        .scalars()
        .all()
    )
    items = [
        DeadLetter(
            delivery_id=r.delivery_id,
            subscription_id=r.subscription_id,
            event_id=r.event_id,
            event_type=r.event_type,
            target_url=r.target_url,
            attempts=r.attempt_number,
            last_status_code=r.status_code,
            last_error=r.error_details,
            trigger=r.trigger,
            failed_at=r.created_at,
        )
        for r in rows
    ]
    return DeadLetters(count=len(items), items=items)


# --- HTTP ---------------------------------------------------------------------------

# Every read goes through the caller's tenant session: an application's key finds only
# its own deliveries, events and dead letters (another's are 404 or absent from lists).
router = APIRouter(prefix="/status", tags=["status"])


@router.get(
    "/deliveries/{delivery_id}",
    response_model=DeliveryStatus,
    summary="Every attempt of one delivery (delivery_id = the 202's delivery_id = webhook-id)",
    responses=error_responses(401, 404, 422),
)
async def get_delivery(delivery_id: uuid.UUID, tenant: Caller) -> Any:
    async with tenant.session() as session:
        return await delivery_status(session, delivery_id)


@router.get(
    "/subscriptions/{subscription_id}/deliveries",
    response_model=SubscriptionDeliveries,
    summary="Attempt totals of a subscription and its latest attempts",
    responses=error_responses(401, 404, 422),
)
async def get_subscription_deliveries(
    subscription_id: uuid.UUID,
    tenant: Caller,
    limit: Annotated[int, Query(ge=1, le=MAX_LOGS)] = 50,
) -> Any:
    async with tenant.session() as session:
        return await subscription_deliveries(session, subscription_id, limit)


@router.get(
    "/events/{event_id}",
    response_model=EventStatus,
    summary="An ingested event and the state of each of its deliveries",
    responses=error_responses(401, 404, 422),
)
async def get_event(event_id: uuid.UUID, tenant: Caller) -> Any:
    async with tenant.session() as session:
        return await event_status(session, event_id)


@router.get(
    "/dlq",
    response_model=DeadLetters,
    summary="Dead letters: deliveries that ended FAILURE, with their last error",
    responses=error_responses(401, 422),
)
async def get_dead_letters(
    tenant: Caller,
    subscription_id: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LOGS)] = 100,
) -> Any:
    async with tenant.session() as session:
        return await dead_letters(session, subscription_id, limit)
