"""Delivery statistics over a time window (GET /status/stats).

Everything is computed in SQL over ``delivery_attempts`` rows in the window, found through
the (created_at, status) index and partition pruning, so the cost is bounded by the window
(capped at ``MAX_WINDOW``), not by the table. Results go through ``StatsCache``
(stats_cache.py) because dashboards poll.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.ingest.errors import Unprocessable, error_responses
from services.ingest.resources import Resources, from_request
from services.ingest.tenancy import Caller
from shared.logging import get_logger
from shared.settings import parse_duration

log = get_logger("ingest.stats")

MAX_WINDOW = timedelta(hours=24)
# Lag comes from the broker; a slow broker must not hold the stats answer hostage.
LAG_TIMEOUT = 2.0

# SUCCESS and FAILURE rows are terminal (one per finished delivery); FAILED_ATTEMPT rows
# are retries along the way. Latency is ingest → successful delivery (first_received_at
# travels with the job, created_at is when the attempt row was stamped), for deliveries
# that came from ingest: a manual retry or replay keeps the original first_received_at,
# hours or days back, and would read as a huge latency.
_TOTALS = """
    SELECT
        count(*) AS attempts,
        count(DISTINCT delivery_id) AS deliveries,
        count(*) FILTER (WHERE status = 'SUCCESS') AS succeeded,
        count(*) FILTER (WHERE status = 'FAILURE') AS failed,
        count(*) FILTER (WHERE status = 'FAILED_ATTEMPT') AS failed_attempts,
        percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
            ORDER BY extract(epoch FROM created_at - first_received_at)
        ) FILTER (
            WHERE status = 'SUCCESS' AND first_received_at IS NOT NULL AND trigger = 'ingest'
        ) AS latency
    FROM delivery_attempts
    WHERE created_at >= now() - CAST(:window AS interval) AND {tenant}
    """

_BY_SUBSCRIPTION = """
    SELECT
        subscription_id,
        count(*) FILTER (WHERE status = 'SUCCESS') AS succeeded,
        count(*) FILTER (WHERE status = 'FAILURE') AS failed,
        count(*) FILTER (WHERE status = 'FAILED_ATTEMPT') AS failed_attempts,
        count(*) AS attempts
    FROM delivery_attempts
    WHERE created_at >= now() - CAST(:window AS interval) AND {tenant}
    GROUP BY subscription_id
    ORDER BY count(*) FILTER (WHERE status <> 'SUCCESS') DESC, subscription_id
    LIMIT :top
    """


# Raw SQL is not rewritten by the tenant session (tenancy.py): scope it here. Two texts,
# not one with "(:app IS NULL OR ...)", so each keeps a plan that uses its index.
def _scoped(sql: str) -> dict[bool, TextClause]:
    return {
        False: text(sql.format(tenant="true")),
        True: text(sql.format(tenant="application_id = :app")),
    }


_TOTALS_SQL = _scoped(_TOTALS)
_BY_SUBSCRIPTION_SQL = _scoped(_BY_SUBSCRIPTION)


async def compute_stats(
    session: AsyncSession,
    window: timedelta,
    top: int = 10,
    application_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """Over every application, or over one."""
    window = min(window, MAX_WINDOW)
    params = {"window": window, "top": top, "app": application_id}
    scoped = application_id is not None
    totals = (await session.execute(_TOTALS_SQL[scoped], params)).mappings().one()
    finished = totals["succeeded"] + totals["failed"]
    latency = totals["latency"] or [None, None, None]
    rows = (await session.execute(_BY_SUBSCRIPTION_SQL[scoped], params)).mappings().all()
    return {
        "window_seconds": int(window.total_seconds()),
        "deliveries": {
            "total": totals["deliveries"],
            "SUCCESS": totals["succeeded"],
            "FAILURE": totals["failed"],
            "in_retry": max(totals["deliveries"] - finished, 0),
        },
        "attempts": {"total": totals["attempts"], "FAILED_ATTEMPT": totals["failed_attempts"]},
        "success_rate": round(totals["succeeded"] / finished, 4) if finished else None,
        "attempts_per_delivery": (
            round(totals["attempts"] / totals["deliveries"], 3) if totals["deliveries"] else None
        ),
        "latency_seconds": {
            "p50": _round(latency[0]),
            "p95": _round(latency[1]),
            "p99": _round(latency[2]),
        },
        "top_subscriptions_by_failures": [
            {
                "subscription_id": str(r["subscription_id"]),
                "SUCCESS": r["succeeded"],
                "FAILURE": r["failed"],
                "FAILED_ATTEMPT": r["failed_attempts"],
                "attempts": r["attempts"],
            }
            for r in rows
        ],
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


async def queue_depth(res: Resources) -> dict[str, int] | None:
    """Consumer lag per topic for the dispatcher and retry-scheduler groups (None: unknown)."""
    topics = res.topics
    try:
        dispatcher, scheduler = await asyncio.wait_for(
            asyncio.gather(
                res.lag.lag(topics.dispatcher_group, [topics.events, topics.deliveries]),
                res.lag.lag(topics.retry_scheduler_group, list(topics.retry_topics)),
            ),
            LAG_TIMEOUT,
        )
    except Exception as exc:  # stats stay useful without the broker
        log.warning("consumer lag unavailable", error=str(exc))
        return None
    return {**dispatcher, **scheduler}


def _computation(
    res: Resources, span: timedelta, top: int, application_id: uuid.UUID | None
) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def compute() -> dict[str, Any]:
        async with res.sessions() as session:
            result = await compute_stats(session, span, top, application_id)
        # Consumer lag is the whole system's: an application's key does not see it.
        result["queue_depth"] = await queue_depth(res) if application_id is None else None
        result["computed_at"] = datetime.now(UTC).isoformat()
        return result

    return compute


async def window_stats(
    res: Resources, span: timedelta, top: int = 10, application_id: uuid.UUID | None = None
) -> dict[str, Any]:
    """``compute_stats`` plus queue depth, through the cache that the API route and the
    dashboard share. The answer is shared too: callers must not change it."""
    compute = _computation(res, span, top, application_id)
    return await res.stats_cache.get_or_compute(span, top, compute, application_id)


async def prewarm(res: Resources, span: timedelta, top: int = 10, wait: float = 2.0) -> bool:
    """Compute a window's statistics at start-up (the dashboard's overview), so its first
    viewer does not wait for the SQL. Waits up to ``wait`` seconds (about 0.3 s on the
    bench's 100,000 attempts); a slower computation finishes in the background and
    start-up goes on. True when the answer is ready."""
    return await res.stats_cache.warm(span, top, _computation(res, span, top, None), wait=wait)


router = APIRouter(prefix="/status", tags=["status"])


@router.get(
    "/stats",
    summary="Delivery statistics over a window: outcomes, success rate, latency, queue depth",
    description=(
        "With an application's key, over that application only (and no `queue_depth`). "
        "`latency_seconds` is ingest → successful delivery, over deliveries that came from "
        "ingest (manual retries and replays keep their original receive time and are left "
        "out). Cached: fresh for 5 s, then served stale while recomputed."
    ),
    responses=error_responses(401, 422),
)
async def get_stats(
    request: Request,
    tenant: Caller,
    window: Annotated[str, Query(max_length=16, description="e.g. 15m, 1h, 24h (max 24h)")] = "1h",
    top: Annotated[int, Query(ge=1, le=100)] = 10,
) -> Any:
    try:
        span = parse_duration(window)
    except ValueError:
        raise Unprocessable(["query", "window"], "not a duration (e.g. 15m, 1h)") from None
    if span <= timedelta(0):
        raise Unprocessable(["query", "window"], "must be positive")
    return await window_stats(from_request(request), span, top, tenant.application_id)
