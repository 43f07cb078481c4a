"""The dashboard's pages (GET). Each reads through the API's service functions
(``subscriptions``, ``applications.service``, ``status``, ``redelivery``, ``stats``) plus
the few read models in ``queries``; none writes."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from services.ingest import pagination
from services.ingest.applications.schemas import ApplicationOut
from services.ingest.applications.service import list_applications, list_keys
from services.ingest.errors import NotFound, Unprocessable
from services.ingest.portal.queries import STATUSES, input_value, parse_event_type, parse_time
from services.ingest.redelivery import DEFAULT_REPLAY_WINDOW, stored_event
from services.ingest.resources import Resources, from_request
from services.ingest.search.queries import DeliveryFilters, search_deliveries
from services.ingest.stats import window_stats
from services.ingest.status import dead_letters, delivery_status, subscription_deliveries
from services.ingest.subscriptions import (
    get_subscription,
    list_subscriptions,
    page_subscriptions,
)
from services.ingest.tenancy import Tenant, resolve_application
from services.ingest.ui import queries
from services.ingest.ui.chart import per_minute_chart
from services.ingest.ui.forms import control_values
from services.ingest.ui.payload import payload_view
from services.ingest.ui.web import PREFIX, LoggedIn, UiRoute, render
from shared.models import Application, AttemptStatus, Subscription

router = APIRouter(route_class=UiRoute, include_in_schema=False)

PAGE_SIZE = 100
RECENT_ATTEMPTS = 50
DLQ_ROWS = 200
# While a retry is on its way (or a delivery is between attempts) the delivery page
# reloads itself this often, so the new attempt shows up without a click.
REFRESH_SECONDS = 2
# Between automatic retries the next attempt is at least a tier (10 s by default) away.
RETRYING_REFRESH_SECONDS = 10
REPLAY_WINDOWS_HOURS = (1, 24, 72)
# An application page lists this many of its subscriptions and of its keys, newest first;
# the page says when there are more.
APPLICATION_ROWS = 100

Notice = Annotated[str | None, Query(max_length=32)]
Count = Annotated[int | None, Query(ge=0, le=1_000_000)]
AppRef = Annotated[str, Path(min_length=1, max_length=100)]
Field = Annotated[str | None, Query(max_length=200)]


def notice_text(code: str | None, n: int | None = None, expired: int | None = None) -> str | None:
    """Fixed messages for the codes our own redirects carry (nothing from the URL is echoed)."""
    count = n or 0
    messages = {
        "created": "Subscription created.",
        "updated": "Subscription saved.",
        "activated": "Subscription activated.",
        "deactivated": "Subscription deactivated: nothing is delivered to it until it is "
        "activated again.",
        "retry-queued": "A new attempt series is queued; this page refreshes until it shows up.",
        "retry-arrived": "The retry's first attempt is in (the top row).",
        "replayed": f"{count} failed deliver{'y' if count == 1 else 'ies'} queued again"
        + (f"; {expired} past retention, nothing left to send." if expired else "."),
        "application-created": "Application created.",
        "test-sent": "A test event is on its way to this subscription only; its delivery "
        "shows under Recent deliveries in a moment (reload).",
        "key-revoked": "API key revoked: every process refuses it within a second.",
    }
    return messages.get(code or "")


# --- overview -----------------------------------------------------------------------


async def _overview_rows(res: Resources, first_minute: datetime) -> tuple[Any, ...]:
    async with res.sessions() as db:
        per_minute = await queries.attempts_per_minute(db, first_minute)
        deactivated = await queries.deactivated_subscriptions(db)
        breakers = await queries.tripped_breakers(db, res.redis, res.settings.topic_prefix)
    return per_minute, deactivated, breakers


@router.get(PREFIX)
async def overview(request: Request, _: LoggedIn) -> Response:
    res = from_request(request)
    first_minute = queries.window_start(datetime.now(UTC))
    window = queries.HEALTH_WINDOW
    # Two connections at once: the window statistics (cached a few seconds, shared with
    # GET /status/stats) and the rows only this page shows.
    stats, (per_minute, deactivated, breakers) = await asyncio.gather(
        window_stats(res, window), _overview_rows(res, first_minute)
    )
    minutes = int(window / timedelta(minutes=1))
    return render(
        request,
        "overview.html",
        stats=stats,
        chart=per_minute_chart(per_minute, first_minute, minutes),
        deactivated=deactivated,
        breakers=breakers,
        queue_depth=stats.get("queue_depth"),
    )


# --- subscriptions ------------------------------------------------------------------


@router.get(f"{PREFIX}/subscriptions")
async def subscriptions_page(
    request: Request,
    _: LoggedIn,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> Response:
    res = from_request(request)
    since = queries.window_start(datetime.now(UTC))
    async with res.sessions() as db:
        subs = await list_subscriptions(db, skip=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
        total = await queries.count_subscriptions(db)
        health = await queries.subscription_health(db, [s.id for s in subs], since)
        apps = await queries.applications_by_id(db, list({s.application_id for s in subs}))
    return render(
        request,
        "subscriptions.html",
        subscriptions=subs,
        health=health,
        applications=apps,
        total=total,
        page=page,
        pages=max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1),
    )


def subscription_form(
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
        "subscription_form.html",
        sub=sub,
        values=values,
        errors=errors or {},
        status_code=status_code,
    )


# Registered before /{subscription_id}, which would otherwise take "new" for an id.
@router.get(f"{PREFIX}/subscriptions/new")
async def new_subscription_page(request: Request, _: LoggedIn) -> Response:
    return subscription_form(request, None)


@router.get(f"{PREFIX}/subscriptions/{{subscription_id}}")
async def subscription_page(
    subscription_id: uuid.UUID,
    request: Request,
    _: LoggedIn,
    notice: Notice = None,
) -> Response:
    res = from_request(request)
    since = queries.window_start(datetime.now(UTC))
    async with res.sessions() as db:
        try:
            sub: Subscription | None = await get_subscription(db, subscription_id)
        except NotFound:
            sub = None  # deleted: its delivery history is still worth showing
        # Raises NotFound when there is neither a subscription nor any history.
        deliveries = await subscription_deliveries(db, subscription_id, RECENT_ATTEMPTS)
        health = await queries.subscription_health(db, [subscription_id], since)
        app = await db.get(Application, sub.application_id) if sub else None
    breaker = (
        await queries.breaker_state(res.redis, res.settings.topic_prefix, sub.target_url)
        if sub
        else None
    )
    return render(
        request,
        "subscription.html",
        subscription_id=subscription_id,
        sub=sub,
        application=app,
        deliveries=deliveries,
        health=health.get(subscription_id),
        breaker=breaker,
        notice=notice_text(notice),
        replay_windows=REPLAY_WINDOWS_HOURS,
        now=datetime.now(UTC),
    )


@router.get(f"{PREFIX}/subscriptions/{{subscription_id}}/edit")
async def edit_subscription_page(
    subscription_id: uuid.UUID, request: Request, _: LoggedIn
) -> Response:
    async with from_request(request).sessions() as db:
        sub = await get_subscription(db, subscription_id)
    return subscription_form(request, sub)


# --- applications -------------------------------------------------------------------


@router.get(f"{PREFIX}/applications")
async def applications_page(
    request: Request, _: LoggedIn, cursor: pagination.Cursor = None
) -> Response:
    async with from_request(request).sessions() as db:
        rows = await list_applications(db, cursor, PAGE_SIZE)
        listing = pagination.page(rows, PAGE_SIZE, ApplicationOut.model_validate)
        counts = await queries.subscription_counts(db, [a.id for a in listing.data])
    return render(
        request,
        "applications.html",
        applications=listing.data,
        subscription_counts=counts,
        next_cursor=listing.next_cursor,
        first_page=cursor is None,
    )


def application_form(
    request: Request,
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    """The create form, with what was typed and what is wrong."""
    return render(
        request,
        "application_form.html",
        values=values or {"uid": "", "name": "", "metadata": ""},
        errors=errors or {},
        status_code=status_code,
    )


# Registered before /{app}, which would otherwise take "new" for a uid.
@router.get(f"{PREFIX}/applications/new")
async def new_application_page(request: Request, _: LoggedIn) -> Response:
    return application_form(request)


@router.get(f"{PREFIX}/applications/{{app}}")
async def application_page(
    app: AppRef, request: Request, _: LoggedIn, notice: Notice = None
) -> Response:
    res = from_request(request)
    async with res.sessions() as db:
        found = await resolve_application(db, app)  # NotFound when deleted or unknown
    # The rest is read in the application's own session: the tenancy hook sees to it that
    # no other application's subscription, key or attempt can show up here.
    async with Tenant(res.sessions, found.id, operator=True).session() as db:
        subs = await page_subscriptions(db, None, APPLICATION_ROWS)
        keys = await list_keys(db, None, APPLICATION_ROWS)
        attempts = await queries.application_attempts(db, found.id, RECENT_ATTEMPTS)
        counts = await queries.subscription_counts(db, [found.id])
    return render(
        request,
        "application.html",
        app=found,
        metadata=json.dumps(found.metadata_, indent=2, ensure_ascii=False),
        subscriptions=subs[:APPLICATION_ROWS],
        subscription_count=counts.get(found.id, 0),
        keys=keys[:APPLICATION_ROWS],
        more_keys=len(keys) > APPLICATION_ROWS,
        limit=APPLICATION_ROWS,
        attempts=attempts,
        now=datetime.now(UTC),
        notice=notice_text(notice),
    )


# --- deliveries ---------------------------------------------------------------------


async def delivery_page_response(
    request: Request,
    delivery_id: uuid.UUID,
    *,
    notice: str | None = None,
    seen: int | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    async with from_request(request).sessions() as db:
        status = await delivery_status(db, delivery_id)
        event = await stored_event(db, status.event_id)
        sub = await db.get(Subscription, status.subscription_id)
    still_retrying = status.latest_status == AttemptStatus.FAILED_ATTEMPT
    waiting_for_retry = notice == "retry-queued" and status.total_attempts <= (seen or 0)
    if notice == "retry-queued" and not waiting_for_retry:
        notice = "retry-arrived"
    refresh = None
    if waiting_for_retry:
        refresh = REFRESH_SECONDS
    elif still_retrying:
        refresh = RETRYING_REFRESH_SECONDS
    return render(
        request,
        "delivery.html",
        status_code=status_code,
        delivery=status,
        attempts=list(reversed(status.logs)),
        event=event,
        payload=payload_view(event.body) if event else None,
        sub=sub,
        still_retrying=still_retrying,
        notice=notice_text(notice),
        error=error,
        refresh=refresh,
    )


@router.get(f"{PREFIX}/deliveries/{{delivery_id}}")
async def delivery_page(
    delivery_id: uuid.UUID,
    request: Request,
    _: LoggedIn,
    notice: Notice = None,
    seen: Count = None,
) -> Response:
    return await delivery_page_response(request, delivery_id, notice=notice, seen=seen)


@router.get(f"{PREFIX}/deliveries")
async def deliveries_page(
    request: Request,
    _: LoggedIn,
    status: Field = None,
    event_type: Field = None,
    subscription_id: Field = None,
    application: Field = None,
    since: Field = None,
    until: Field = None,
    cursor: pagination.Cursor = None,
) -> Response:
    """Search deliveries (``GET /status/deliveries`` as a page): the same filters, an
    application by id or uid, times as a datetime-local field gives them (UTC)."""
    since_at, until_at = parse_time(since, "since"), parse_time(until, "until")
    typed = {
        "status": (status or "").strip(),
        "event_type": parse_event_type(event_type) or "",
        "subscription_id": (subscription_id or "").strip(),
        "application": (application or "").strip(),
        "since": input_value(since_at) or "",
        "until": input_value(until_at) or "",
    }
    if typed["status"] and typed["status"] not in STATUSES:
        raise Unprocessable(["query", "status"], f"status must be one of {', '.join(STATUSES)}")
    async with from_request(request).sessions() as db:
        app = await resolve_application(db, typed["application"]) if typed["application"] else None
        filters = DeliveryFilters(
            status=typed["status"] or None,
            subscription_id=_uuid_field(typed["subscription_id"], "subscription_id"),
            event_type=typed["event_type"] or None,
            application_id=app.id if app else None,
            since=since_at,
            until=until_at,
        )
        listing = await search_deliveries(db, filters, cursor, PAGE_SIZE)
        apps = await queries.applications_by_id(db, list({d.application_id for d in listing.data}))
    kept = {k: v for k, v in typed.items() if v}
    return render(
        request,
        "deliveries.html",
        deliveries=listing.data,
        applications=apps,
        typed=typed,
        filtered=bool(kept),
        statuses=STATUSES,
        next_query=urlencode({**kept, "cursor": listing.next_cursor})
        if listing.next_cursor
        else None,
        first_page=cursor is None,
        first_query=urlencode(kept),
    )


def _uuid_field(value: str, field: str) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Unprocessable(["query", field], f"{field} must be an id (a UUID)") from None


# --- dead letters -------------------------------------------------------------------


@router.get(f"{PREFIX}/dlq")
async def dlq_page(
    request: Request,
    _: LoggedIn,
    subscription_id: uuid.UUID | None = None,
    notice: Notice = None,
    n: Count = None,
    expired: Count = None,
) -> Response:
    async with from_request(request).sessions() as db:
        letters = await dead_letters(db, subscription_id, DLQ_ROWS)
    per_subscription: dict[uuid.UUID, int] = {}
    for item in letters.items:
        per_subscription[item.subscription_id] = per_subscription.get(item.subscription_id, 0) + 1
    return render(
        request,
        "dlq.html",
        letters=letters.items,
        limit=DLQ_ROWS,
        per_subscription=per_subscription,
        subscription_id=subscription_id,
        notice=notice_text(notice, n, expired),
        replay_windows=REPLAY_WINDOWS_HOURS,
        default_window=int(DEFAULT_REPLAY_WINDOW / timedelta(hours=1)),
    )
