"""``GET /status/events`` and ``GET /status/deliveries``: search with filters and cursors.

Both read through the caller's tenant session: an application's key finds only its own
events and deliveries (another application's id in a filter matches nothing).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from services.ingest.errors import Unprocessable, error_responses
from services.ingest.pagination import Cursor, Page
from services.ingest.schemas import EVENT_TYPE_PATTERN, Moment
from services.ingest.search import queries
from services.ingest.search.schemas import DeliveryRow, EventRow
from services.ingest.tenancy import Caller
from shared.models import AttemptStatus

router = APIRouter(prefix="/status", tags=["status"])

# 500 rows of ~400 bytes is a 200 KB answer; more is a bulk export, not a page.
MAX_LIMIT = 500

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="rows per page")]
# Shaped like the event types ingest takes: anything else matches nothing, and a NUL
# would reach PostgreSQL as an error (schemathesis found the 500).
EventTypeFilter = Annotated[
    str | None,
    Query(min_length=1, max_length=200, pattern=EVENT_TYPE_PATTERN, description="exact event type"),
]
Since = Annotated[
    Moment | None,
    Query(description="RFC 3339 with an offset, e.g. 2026-12-04T10:00:00Z; inclusive"),
]
Until = Annotated[Moment | None, Query(description="RFC 3339 with an offset; exclusive")]


def _check_window(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and since >= until:
        raise Unprocessable(["query", "until"], "until must be later than since")


@router.get(
    "/events",
    response_model=Page[EventRow],
    summary="Search events, newest first (one row per event, without its body)",
    responses=error_responses(401, 422),
)
async def list_events(
    tenant: Caller,
    event_type: EventTypeFilter = None,
    application_id: uuid.UUID | None = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[EventRow]:
    _check_window(since, until)
    filters = queries.EventFilters(event_type, application_id, since, until)
    async with tenant.session() as session:
        return await queries.search_events(session, filters, cursor, limit)


@router.get(
    "/deliveries",
    response_model=Page[DeliveryRow],
    summary="Search deliveries by their latest attempt, newest first (one row per delivery)",
    description="Every filter applies to a delivery's latest attempt: `status=FAILED_ATTEMPT` "
    "finds the deliveries still retrying, `since`/`until` bound the latest attempt's time. "
    "A page looks at a bounded number of attempts, so a page can be shorter than `limit`, "
    "even empty, while `next_cursor` is set: follow it until it is null.",
    responses=error_responses(401, 422),
)
async def list_deliveries(
    tenant: Caller,
    status: AttemptStatus | None = None,
    subscription_id: uuid.UUID | None = None,
    event_type: EventTypeFilter = None,
    application_id: uuid.UUID | None = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[DeliveryRow]:
    _check_window(since, until)
    filters = queries.DeliveryFilters(
        status.value if status else None,
        subscription_id,
        event_type,
        application_id,
        since,
        until,
    )
    async with tenant.session() as session:
        return await queries.search_deliveries(session, filters, cursor, limit)
