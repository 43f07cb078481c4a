"""Read models only the portal needs: one row per delivery, filtered and paged.

Every query here runs in the portal's tenant session, which adds the application to
each statement: the deliveries list walks ``ix_attempts_application
(application_id, created_at)`` newest first and keeps an attempt only when no later
attempt of its delivery exists (``ix_attempts_delivery``), so a page costs its own rows
plus one index probe each, however many attempts the application has.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from urllib.parse import urlencode

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from services.ingest.errors import Unprocessable
from services.ingest.pagination import keyset
from services.ingest.schemas import EVENT_TYPE_PATTERN
from shared.models import AttemptStatus, DeliveryAttempt

STATUSES = tuple(s.value for s in AttemptStatus)


@dataclass(frozen=True, slots=True)
class DeliveryFilters:
    """What the deliveries list is narrowed to; each applies to a delivery's latest attempt."""

    status: str | None = None
    event_type: str | None = None
    endpoint: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def query(self, **extra: str) -> str:
        """The filters (and ``extra``) as a query string, for links that keep them."""
        values = {
            "status": self.status,
            "event_type": self.event_type,
            "endpoint": str(self.endpoint) if self.endpoint else None,
            "since": input_value(self.since),
            "until": input_value(self.until),
            **extra,
        }
        return urlencode({k: v for k, v in values.items() if v})


def parse_filters(
    status: str | None,
    event_type: str | None,
    endpoint: str | None,
    since: str | None,
    until: str | None,
) -> DeliveryFilters:
    """The filter form's fields; empty ones filter nothing."""
    status = status or None
    if status is not None and status not in STATUSES:
        raise Unprocessable(["query", "status"], f"status must be one of {', '.join(STATUSES)}")
    endpoint_id = None
    if endpoint:
        try:
            endpoint_id = uuid.UUID(endpoint)
        except ValueError:
            raise Unprocessable(["query", "endpoint"], "not an endpoint of this list") from None
    return DeliveryFilters(
        status=status,
        event_type=parse_event_type(event_type),
        endpoint=endpoint_id,
        since=parse_time(since, "since"),
        until=parse_time(until, "until"),
    )


def parse_event_type(value: str | None) -> str | None:
    """The event type field, trimmed; empty filters nothing."""
    value = (value or "").strip()
    if not value:
        return None
    if not re.fullmatch(EVENT_TYPE_PATTERN, value):
        # No stored event type looks otherwise, and PostgreSQL refuses a NUL outright.
        raise Unprocessable(
            ["query", "event_type"], "event_type must be printable ASCII without spaces"
        )
    return value


def parse_time(value: str | None, field: str) -> datetime | None:
    """``2026-01-31T12:00`` (a datetime-local field: UTC) or RFC 3339 with its offset."""
    if not value or not value.strip():
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise Unprocessable(
            ["query", field], f"{field} must be a date and time, e.g. 2026-01-31T12:00 (UTC)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def input_value(when: datetime | None) -> str | None:
    """What a datetime-local field shows for ``when`` (UTC, to the minute or second)."""
    if when is None:
        return None
    utc = when.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M}" if utc.second == 0 else f"{utc:%Y-%m-%dT%H:%M:%S}"


async def latest_attempts(
    session: AsyncSession, filters: DeliveryFilters, cursor: str | None, limit: int
) -> Sequence[DeliveryAttempt]:
    """One row per delivery, its latest attempt, newest first; ``limit + 1`` rows at most
    (``pagination.page`` tells from the extra one whether another page follows)."""
    a = DeliveryAttempt
    later = aliased(DeliveryAttempt)
    superseded = (
        select(later.id)
        .where(
            later.delivery_id == a.delivery_id,
            tuple_(later.created_at, later.id) > tuple_(a.created_at, a.id),
        )
        .exists()
    )
    query = select(a).where(~superseded)
    if filters.status is not None:
        query = query.where(a.status == filters.status)
    if filters.event_type is not None:
        query = query.where(a.event_type == filters.event_type)
    if filters.endpoint is not None:
        query = query.where(a.subscription_id == filters.endpoint)
    if filters.since is not None:
        query = query.where(a.created_at >= filters.since)
    if filters.until is not None:
        query = query.where(a.created_at < filters.until)
    query = keyset(query, a.created_at, a.id, cursor, limit)
    return (await session.execute(query)).scalars().all()


async def has_attempts_for(session: AsyncSession, subscription_id: uuid.UUID) -> bool:
    """Whether this application has history for ``subscription_id`` (a deleted endpoint's)."""
    query = select(DeliveryAttempt.id).where(DeliveryAttempt.subscription_id == subscription_id)
    return (await session.execute(query.limit(1))).first() is not None
