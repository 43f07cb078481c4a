"""The two searches: events, and deliveries by their latest attempt; newest first, by cursor.

Both run in the caller's tenant session, which adds ``application_id`` to every statement
(``tenancy``), and each filter, alone or inside one application, has an index that ends
in the time column (migration 0010), so a page walks an index from the cursor on and
reads its own rows, however far back it is.

A delivery is its attempt rows (``delivery_attempts``, one per attempt); its state is its
latest attempt's. The deliveries search walks attempts newest first through the index of
the filter and keeps an attempt only when its delivery has no later one (a probe of
``ix_attempts_delivery``, pruned to the partitions at or after the attempt). Most
candidates are kept, but under ``status=FAILED_ATTEMPT`` almost none are (every retried
attempt is one, and only deliveries still retrying have one as their latest): 165,000
probes, 550 ms, to tell that no older delivery is still retrying on the bench's 1,000,000
attempts. So a page looks at ``SCAN_BUDGET`` candidates at most; when they hold fewer
rows than asked for, the page is short (even empty) and its cursor continues from the
last candidate looked at. Walking every page still gives every matching delivery once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, aliased

from services.ingest.pagination import Page, decode_cursor, encode_cursor
from services.ingest.search.schemas import DeliveryRow, EventRow
from shared.models import DeliveryAttempt, Event

# Candidates a deliveries page may look at: ~3 µs of probes each when they are warm, so
# ~6 ms of a 50 ms page at worst (bench ``search``: 10-14 ms cold for the retrying filter).
SCAN_BUDGET = 2_000


@dataclass(frozen=True, slots=True)
class EventFilters:
    event_type: str | None = None
    application_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class DeliveryFilters:
    """Each applies to a delivery's latest attempt (``since``/``until`` to its time)."""

    status: str | None = None
    subscription_id: uuid.UUID | None = None
    event_type: str | None = None
    application_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None


def _window(
    at: InstrumentedAttribute[datetime], since: datetime | None, until: datetime | None
) -> list[ColumnElement[bool]]:
    """``since`` inclusive, ``until`` exclusive."""
    conditions = []
    if since is not None:
        conditions.append(at >= since)
    if until is not None:
        conditions.append(at < until)
    return conditions


def _after(
    at: InstrumentedAttribute[datetime],
    row_id: InstrumentedAttribute[uuid.UUID],
    cursor: str | None,
) -> list[ColumnElement[bool]]:
    """Rows older than the cursor's, by ``(time, id)``. The plain ``<=`` on the time lets
    PostgreSQL skip the partitions that are newer than the cursor."""
    if cursor is None:
        return []
    when, last_id = decode_cursor(cursor)
    return [at <= when, tuple_(at, row_id) < tuple_(when, last_id)]


async def search_events(
    session: AsyncSession, filters: EventFilters, cursor: str | None, limit: int
) -> Page[EventRow]:
    e = Event
    conditions = [
        *_window(e.received_at, filters.since, filters.until),
        *_after(e.received_at, e.id, cursor),
    ]
    if filters.event_type is not None:
        conditions.append(e.event_type == filters.event_type)
    if filters.application_id is not None:
        conditions.append(e.application_id == filters.application_id)
    query = (
        select(
            e.id,
            e.event_type,
            e.application_id,
            e.subscription_id,
            e.received_at,
            e.content_type,
            func.octet_length(e.body).label("size_bytes"),
        )
        .where(*conditions)
        .order_by(e.received_at.desc(), e.id.desc())
        .limit(limit + 1)
    )
    rows = (await session.execute(query)).all()
    shown = rows[:limit]
    return Page[EventRow](
        data=[
            EventRow(
                event_id=r.id,
                event_type=r.event_type,
                application_id=r.application_id,
                subscription_id=r.subscription_id,
                received_at=r.received_at,
                content_type=r.content_type,
                size_bytes=r.size_bytes,
            )
            for r in shown
        ],
        next_cursor=encode_cursor(shown[-1].received_at, shown[-1].id)
        if len(rows) > limit
        else None,
    )


def _delivery_conditions(filters: DeliveryFilters) -> list[ColumnElement[bool]]:
    a = DeliveryAttempt
    conditions = _window(a.created_at, filters.since, filters.until)
    if filters.status is not None:
        # Inline, not a bound parameter: the partial indexes (status <> 'SUCCESS',
        # status = 'FAILED_ATTEMPT') only match a constant, and a prepared statement
        # switches to a generic plan after five runs (p99 of the retrying filter inside
        # an application: 94 ms with a parameter, through the application's whole index).
        conditions.append(a.status == literal(filters.status, literal_execute=True))
    if filters.subscription_id is not None:
        conditions.append(a.subscription_id == filters.subscription_id)
    if filters.event_type is not None:
        conditions.append(a.event_type == filters.event_type)
    if filters.application_id is not None:
        conditions.append(a.application_id == filters.application_id)
    return conditions


async def latest_attempts(
    session: AsyncSession,
    filters: DeliveryFilters,
    cursor: str | None,
    limit: int,
    budget: int = SCAN_BUDGET,
) -> tuple[list[DeliveryAttempt], str | None]:
    """The latest attempt of each matching delivery, newest first, and the cursor of the
    next page (None after the last)."""
    a = DeliveryAttempt
    conditions = [*_delivery_conditions(filters), *_after(a.created_at, a.id, cursor)]
    newest_first = (a.created_at.desc(), a.id.desc())
    candidates = aliased(
        DeliveryAttempt,
        select(a).where(*conditions).order_by(*newest_first).limit(budget).subquery(),
    )
    later = aliased(DeliveryAttempt)
    superseded = (
        select(later.id)
        .where(
            later.delivery_id == candidates.delivery_id,
            later.created_at >= candidates.created_at,
            tuple_(later.created_at, later.id) > tuple_(candidates.created_at, candidates.id),
        )
        .exists()
    )
    query = (
        select(candidates)
        .where(~superseded)
        .order_by(candidates.created_at.desc(), candidates.id.desc())
        .limit(limit + 1)
    )
    rows = list((await session.execute(query)).scalars().all())
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1].created_at, rows[-1].id)
    # A short page: either nothing older matches, or the budget ran out first. Then the
    # next page starts after the last candidate looked at (every candidate up to it was).
    last_looked_at = (
        await session.execute(
            select(a.created_at, a.id)
            .where(*conditions)
            .order_by(*newest_first)
            .offset(budget - 1)
            .limit(1)
        )
    ).first()
    if last_looked_at is None:
        return rows, None
    return rows, encode_cursor(last_looked_at.created_at, last_looked_at.id)


def delivery_row(attempt: DeliveryAttempt) -> DeliveryRow:
    return DeliveryRow(
        delivery_id=attempt.delivery_id,
        event_id=attempt.event_id,
        subscription_id=attempt.subscription_id,
        application_id=attempt.application_id,
        event_type=attempt.event_type,
        target_url=attempt.target_url,
        status=attempt.status,
        attempt_number=attempt.attempt_number,
        status_code=attempt.status_code,
        error_details=attempt.error_details,
        duration_ms=attempt.duration_ms,
        trigger=attempt.trigger,
        latest_attempt_at=attempt.created_at,
    )


async def search_deliveries(
    session: AsyncSession,
    filters: DeliveryFilters,
    cursor: str | None,
    limit: int,
    budget: int = SCAN_BUDGET,
) -> Page[DeliveryRow]:
    rows, next_cursor = await latest_attempts(session, filters, cursor, limit, budget)
    return Page[DeliveryRow](data=[delivery_row(r) for r in rows], next_cursor=next_cursor)
