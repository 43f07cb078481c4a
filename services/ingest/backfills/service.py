"""Backfills: the checks a new one must pass, and reading or cancelling one.

Every read and write goes through the caller's tenant session (``tenancy.py``): a scoped
key starts backfills only for its own subscriptions and sees only its own backfills. The
work itself is the janitor's (``services/janitor/backfill.py``), which claims the row.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from services.ingest.backfills.schemas import BackfillCreate
from services.ingest.errors import Conflict, NotFound, ServiceUnavailable, Unprocessable
from services.ingest.resources import Resources
from services.ingest.subscriptions import get_subscription
from services.ingest.tenancy import Tenant
from shared.eventlog import earliest_available, history_reader
from shared.models import Backfill

# Clocks differ: an ``until`` this far ahead of ours is taken as "now".
CLOCK_SKEW = timedelta(seconds=60)
# Broker timestamps start at the Unix epoch.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Asking the broker where the log starts is a few small requests; past this it is down.
LOG_QUERY_TIMEOUT = 10.0


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def check_window(data: BackfillCreate, now: datetime) -> tuple[datetime, datetime]:
    """``(since, until)`` with ``until`` defaulting to now; 422 for a window that cannot be."""
    since, until = data.since, data.until or now
    if since < EPOCH:
        raise Unprocessable(("body", "since"), f"must not be before {_iso(EPOCH)}")
    if until > now + CLOCK_SKEW:
        raise Unprocessable(("body", "until"), f"must not be in the future (now is {_iso(now)})")
    until = min(until, now)
    if since >= until:
        raise Unprocessable(("body", "since"), "must be before until")
    return since, until


async def check_retained(res: Resources, since: datetime, now: datetime) -> None:
    """422 when the log no longer holds events from ``since`` on, naming the earliest time
    it does hold."""
    retention = timedelta(hours=res.settings.events_retention_hours)
    try:
        async with asyncio.timeout(LOG_QUERY_TIMEOUT):
            async with history_reader(res.settings) as consumer:
                earliest = await earliest_available(consumer, res.topics.events, retention, now)
    except TimeoutError:
        raise ServiceUnavailable("the event log did not answer; retry later", 5) from None
    if earliest is not None and since < earliest:
        raise Unprocessable(
            ("body", "since"),
            f"the event log no longer holds events before {_iso(earliest)}: the earliest time "
            f"available is {_iso(earliest)}",
            "since_before_retention",
        )


async def start_backfill(
    res: Resources, tenant: Tenant, subscription_id: uuid.UUID, data: BackfillCreate
) -> Backfill:
    """A running backfill of the window for the subscription; the janitor picks it up."""
    now = datetime.now(UTC)
    async with tenant.session() as session:
        sub = await get_subscription(session, subscription_id)
    if not sub.is_active:
        raise Conflict("this subscription is inactive: activate it to backfill it")
    since, until = check_window(data, now)
    await check_retained(res, since, now)
    backfill = Backfill(
        id=uuid.uuid4(),
        subscription_id=sub.id,
        application_id=sub.application_id,
        status="running",
        since=since,
        until=until,
        scanned=0,
        matched=0,
        published=0,
    )
    async with tenant.begin() as session:
        session.add(backfill)
    async with tenant.session() as session:
        return await get_backfill(session, backfill.id)


async def get_backfill(session: AsyncSession, backfill_id: uuid.UUID) -> Backfill:
    found = await session.get(Backfill, backfill_id, populate_existing=True)
    if found is None:
        raise NotFound("backfill not found")
    return found


async def cancel_backfill(tenant: Tenant, backfill_id: uuid.UUID) -> Backfill:
    """Cancelled if it was running (the worker stops within a second); a finished one
    is left as it is."""
    async with tenant.begin() as session:
        await get_backfill(session, backfill_id)
        await session.execute(
            update(Backfill)
            .where(Backfill.id == backfill_id, Backfill.status == "running")
            .values(status="cancelled", finished_at=datetime.now(UTC), updated_at=datetime.now(UTC))
            .execution_options(synchronize_session=False)
        )
    async with tenant.session() as session:
        return await get_backfill(session, backfill_id)
