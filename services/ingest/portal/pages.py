"""The portal's pages (GET): one application's endpoints, deliveries and dead letters.

Every read goes through ``portal.tenant.session()``, the tenant session of the portal
session's application: another application's endpoint or delivery is not found (a 404
page that names nothing of it), by the same mechanism that isolates scoped API keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from services.ingest import pagination
from services.ingest.errors import NotFound
from services.ingest.portal import queries
from services.ingest.portal.headers import sent_at, sent_headers, signatures_at
from services.ingest.portal.web import PREFIX, Portal, PortalLoggedIn, PortalRoute, render
from services.ingest.redelivery import DEFAULT_REPLAY_WINDOW, stored_event
from services.ingest.schemas import AttemptOut, SubscriptionOut
from services.ingest.status import dead_letters, delivery_status
from services.ingest.subscriptions import get_subscription, page_subscriptions
from services.ingest.ui import queries as ui_queries
from services.ingest.ui.forms import control_values
from services.ingest.ui.payload import payload_view
from shared.models import AttemptStatus, Subscription

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

ENDPOINTS_PAGE = 50
DELIVERIES_PAGE = 50
# An endpoint's page shows its latest deliveries; the deliveries list has the rest.
RECENT_DELIVERIES = 20
DLQ_ROWS = 200
# The endpoint filter offers this many endpoints, newest first; an application with more
# can still filter on any of them from the endpoint's own page.
ENDPOINT_CHOICES = 250
# While a test event or a retry is on its way the page reloads itself this often, so
# the new attempt shows up without a click (as on the dashboard's delivery page).
REFRESH_SECONDS = 2
RETRYING_REFRESH_SECONDS = 10

Notice = Annotated[str | None, Query(max_length=32)]
Count = Annotated[int | None, Query(ge=0, le=1_000_000)]
Field = Annotated[str | None, Query(max_length=200)]


def notice_text(code: str | None, n: int | None = None, expired: int | None = None) -> str | None:
    """Fixed messages for the codes our own redirects carry (nothing from the URL is echoed)."""
    count = n or 0
    messages = {
        "updated": "Endpoint saved.",
        "enabled": "Endpoint enabled.",
        "disabled": "Endpoint disabled: nothing is sent to it until it is enabled again.",
        "deleted": "Endpoint deleted. Its deliveries stay in the list.",
        "test-sent": "Test event sent. It shows up here once its first attempt is recorded.",
        "retry-queued": "A new attempt is queued; this page refreshes until it shows up.",
        "retry-arrived": "The retry's first attempt is in (the top row).",
        "recovered": f"{count} failed deliver{'y' if count == 1 else 'ies'} sent again"
        + (f"; {expired} past retention, nothing left to send." if expired else "."),
    }
    return messages.get(code or "")


# --- endpoints ----------------------------------------------------------------------


@router.get(PREFIX)
async def endpoints_page(
    request: Request,
    portal: PortalLoggedIn,
    cursor: pagination.Cursor = None,
    notice: Notice = None,
) -> Response:
    since = ui_queries.window_start(datetime.now(UTC))
    async with portal.tenant.session() as db:
        rows = await page_subscriptions(db, cursor, ENDPOINTS_PAGE)
        listing = pagination.page(rows, ENDPOINTS_PAGE, SubscriptionOut.model_validate)
        health = await ui_queries.subscription_health(db, [s.id for s in listing.data], since)
    return render(
        request,
        "portal/endpoints.html",
        endpoints=listing.data,
        health=health,
        next_cursor=listing.next_cursor,
        first_page=cursor is None,
        notice=notice_text(notice),
    )


def endpoint_form(
    request: Request,
    sub: Subscription | None,
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    """The create form (``sub`` None) or the edit form, with what was typed and what is wrong."""
    if values is None:
        values = {
            "target_url": sub.target_url if sub else "",
            "event_types": " ".join(sub.event_types) if sub else "",
            **control_values(sub),
        }
    return render(
        request,
        "portal/endpoint_form.html",
        sub=sub,
        values=values,
        errors=errors or {},
        status_code=status_code,
    )


# Registered before /{subscription_id}, which would otherwise take "new" for an id.
@router.get(f"{PREFIX}/endpoints/new")
async def new_endpoint_page(request: Request, _: PortalLoggedIn) -> Response:
    return endpoint_form(request, None)


@router.get(f"{PREFIX}/endpoints/{{subscription_id}}")
async def endpoint_page(
    subscription_id: uuid.UUID,
    request: Request,
    portal: PortalLoggedIn,
    notice: Notice = None,
    n: Count = None,
    expired: Count = None,
) -> Response:
    now = datetime.now(UTC)
    async with portal.tenant.session() as db:
        sub = await get_subscription(db, subscription_id)
        health = await ui_queries.subscription_health(db, [sub.id], ui_queries.window_start(now))
        filters = queries.DeliveryFilters(endpoint=sub.id)
        recent = await queries.latest_attempts(db, filters, None, RECENT_DELIVERIES)
    return render(
        request,
        "portal/endpoint.html",
        sub=sub,
        health=health.get(sub.id),
        deliveries=[AttemptOut.model_validate(r) for r in recent[:RECENT_DELIVERIES]],
        more_deliveries=len(recent) > RECENT_DELIVERIES,
        deliveries_query=filters.query(),
        recover_since=f"{now - DEFAULT_REPLAY_WINDOW:%Y-%m-%dT%H:%M}",
        now=now,
        notice=notice_text(notice, n, expired),
    )


@router.get(f"{PREFIX}/endpoints/{{subscription_id}}/edit")
async def edit_endpoint_page(
    subscription_id: uuid.UUID, request: Request, portal: PortalLoggedIn
) -> Response:
    async with portal.tenant.session() as db:
        sub = await get_subscription(db, subscription_id)
    return endpoint_form(request, sub)


# --- deliveries ---------------------------------------------------------------------


@router.get(f"{PREFIX}/deliveries")
async def deliveries_page(
    request: Request,
    portal: PortalLoggedIn,
    status: Field = None,
    event_type: Field = None,
    endpoint: Field = None,
    since: Field = None,
    until: Field = None,
    cursor: pagination.Cursor = None,
    notice: Notice = None,
    pending: uuid.UUID | None = None,
) -> Response:
    filters = queries.parse_filters(status, event_type, endpoint, since, until)
    async with portal.tenant.session() as db:
        rows = await queries.latest_attempts(db, filters, cursor, DELIVERIES_PAGE)
        listing = pagination.page(rows, DELIVERIES_PAGE, AttemptOut.model_validate)
        choices = await page_subscriptions(db, None, ENDPOINT_CHOICES)
        if filters.endpoint is not None and not listing.data:
            await _known_endpoint(db, filters.endpoint, choices)
    waiting = pending is not None and all(d.delivery_id != pending for d in listing.data)
    return render(
        request,
        "portal/deliveries.html",
        deliveries=listing.data,
        filters=filters,
        since_value=queries.input_value(filters.since),
        until_value=queries.input_value(filters.until),
        statuses=queries.STATUSES,
        endpoints=choices[:ENDPOINT_CHOICES],
        next_query=filters.query(cursor=listing.next_cursor) if listing.next_cursor else None,
        first_page=cursor is None,
        first_query=filters.query(),
        notice=notice_text(notice),
        refresh=REFRESH_SECONDS if waiting else None,
    )


async def _known_endpoint(
    db: AsyncSession, endpoint: uuid.UUID, choices: Sequence[Subscription]
) -> None:
    """An endpoint filter that names nothing of this application is a 404, as an id in
    the path would be: an endpoint of this application (or a deleted one's history)."""
    if any(s.id == endpoint for s in choices):
        return
    if await db.get(Subscription, endpoint) is None and not await queries.has_attempts_for(
        db, endpoint
    ):
        raise NotFound("endpoint not found")


async def delivery_page_response(
    request: Request,
    portal: Portal,
    delivery_id: uuid.UUID,
    *,
    notice: str | None = None,
    seen: int | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    async with portal.tenant.session() as db:
        status = await delivery_status(db, delivery_id)
        event = await stored_event(db, status.event_id)
        sub = await db.get(Subscription, status.subscription_id)
    latest = status.latest_attempt
    still_retrying = status.latest_status == AttemptStatus.FAILED_ATTEMPT
    waiting_for_retry = notice == "retry-queued" and status.total_attempts <= (seen or 0)
    if notice == "retry-queued" and not waiting_for_retry:
        notice = "retry-arrived"
    refresh = None
    if waiting_for_retry:
        refresh = REFRESH_SECONDS
    elif still_retrying:
        refresh = RETRYING_REFRESH_SECONDS
    timestamp = sent_at(latest.created_at, latest.duration_ms)
    headers = sent_headers(
        delivery_id=delivery_id,
        event_type=latest.event_type,
        content_type=event.content_type if event else "—",
        timestamp=timestamp,
        signatures=signatures_at(sub, datetime.fromtimestamp(timestamp, UTC)),
        custom=sub.headers if sub else None,
    )
    return render(
        request,
        "portal/delivery.html",
        status_code=status_code,
        delivery=status,
        attempts=list(reversed(status.logs)),
        event=event,
        payload=payload_view(event.body) if event else None,
        sub=sub,
        headers=headers,
        still_retrying=still_retrying,
        notice=notice_text(notice),
        error=error,
        refresh=refresh,
    )


@router.get(f"{PREFIX}/deliveries/{{delivery_id}}")
async def delivery_page(
    delivery_id: uuid.UUID,
    request: Request,
    portal: PortalLoggedIn,
    notice: Notice = None,
    seen: Count = None,
) -> Response:
    return await delivery_page_response(request, portal, delivery_id, notice=notice, seen=seen)


# --- dead letters -------------------------------------------------------------------


@router.get(f"{PREFIX}/dlq")
async def dlq_page(request: Request, portal: PortalLoggedIn) -> Response:
    async with portal.tenant.session() as db:
        letters = await dead_letters(db, None, DLQ_ROWS)
    return render(
        request,
        "portal/dlq.html",
        letters=letters.items,
        limit=DLQ_ROWS,
    )
