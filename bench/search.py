"""Search section: GET /status/events and GET /status/deliveries on a million attempts.

Seeds 1,000,000 attempt rows (813,000 deliveries, one event each) over the last 71 hours,
in the 6 h partitions the janitor would have made, across 20 applications and 1,000
subscriptions: 90 % of deliveries succeed at once, 7 % on the third attempt, 3 % end
FAILURE after four; those of the last hour that would fail are still retrying (two
FAILED_ATTEMPT rows). Then times pages of both lists against a real ingest process, with
the operator key and with one application's key: the first page, a page 48 h deep (a
cursor as that page would carry), and the filters, each alone; p50 and p99 of 100
requests after 5 warm-ups. The client runs on the same 2 cores, over loopback: the
figure is the full round trip. Target: every page under 50 ms.

Run alone: ``python -m bench search``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from services.ingest.pagination import encode_cursor
from shared.db import asyncpg_dsn
from tests.support.broker import IngestServer
from tests.support.stack import IsolatedStack

SECTION = "search"
PAGE = 50
REQUESTS = 100
WARMUP = 5
APPLICATIONS = 20
SUBSCRIPTIONS = 1_000
# 90 % succeed at once (1 attempt), 7 % on the third attempt, 3 % end FAILURE after 4;
# the newest 1/72 of the 3 % are still retrying (2 attempts so far): 1.23 attempts per
# delivery, 1,000,000 attempts in all.
DELIVERIES = 813_000
HOURS = 71
RARE_TYPE = "invoice.disputed"  # 1 delivery in 1,000
TYPES = ("order.created", "order.paid", "order.shipped", "invoice.paid", "user.signup")

APP_ID = "md5('app' || {i})::uuid"
SUB_ID = "md5('sub' || {i})::uuid"
RECENT = DELIVERIES // HOURS  # received in the last hour: the still-retrying ones live here
_TYPES = "ARRAY[" + ", ".join(f"'{t}'" for t in TYPES) + "]"
# Types, subscriptions and outcomes are drawn from different digits of g, so that no
# filter is correlated with another (every application has every outcome).
_TYPE = f"CASE WHEN g % 997 = 7 THEN '{RARE_TYPE}' ELSE ({_TYPES})[g / 7 % {len(TYPES)} + 1] END"
_ATTEMPTS = (
    f"CASE WHEN g % 100 < 90 THEN 1 WHEN g % 100 < 97 THEN 3 "
    f"WHEN g % 100 < 99 OR g >= {RECENT} THEN 4 ELSE 2 END"
)
_STATUS = (
    "CASE WHEN g % 100 < 90 THEN 'SUCCESS' "
    "WHEN g % 100 < 97 THEN CASE WHEN n = 3 THEN 'SUCCESS' ELSE 'FAILED_ATTEMPT' END "
    "WHEN n = 4 THEN 'FAILURE' ELSE 'FAILED_ATTEMPT' END"
)

# Set-based generation in the server; only this module's constants are formatted in.
LOAD = [
    # Partitions for the whole window, as the janitor would have made them.
    "SELECT hookstream_ensure_partitions('events', interval '6 hours', "
    "now() - interval '4 days', now() + interval '1 day')",
    "SELECT hookstream_ensure_partitions('delivery_attempts', interval '6 hours', "
    "now() - interval '4 days', now() + interval '1 day')",
    f"""
    INSERT INTO applications (id, uid, name)
    SELECT {APP_ID.format(i="i")}, 'search-' || i, 'Search ' || i
    FROM generate_series(0, {APPLICATIONS - 1}) AS i
    """,  # noqa: S608
    f"""
    INSERT INTO subscriptions (id, application_id, target_url, event_types, is_active)
    SELECT {SUB_ID.format(i="s")}, {APP_ID.format(i=f"(s % {APPLICATIONS})")},
           'https://hooks.example.test/' || s, '{{}}'::text[], true
    FROM generate_series(0, {SUBSCRIPTIONS - 1}) AS s
    """,  # noqa: S608
    # Deliveries g: received at now() - HOURS * g / DELIVERIES (g = 0 is the newest).
    f"""
    CREATE TEMP TABLE seed AS
    SELECT g, md5('ev' || g)::uuid AS event_id,
           now() - interval '{HOURS} hours' * (g::float8 / {DELIVERIES}) AS received_at,
           {_TYPE} AS event_type, {SUB_ID.format(i=f"(g / 100 % {SUBSCRIPTIONS})")} AS sub,
           {APP_ID.format(i=f"(g / 100 % {SUBSCRIPTIONS} % {APPLICATIONS})")} AS app
    FROM generate_series(0, {DELIVERIES - 1}) AS g
    """,  # noqa: S608
    """
    INSERT INTO events (id, received_at, event_type, subscription_id, content_type, body,
                        application_id)
    SELECT event_id, received_at, event_type, sub, 'application/json',
           convert_to('{"order": ' || g || ', "note": "bench"}', 'UTF8'), app
    FROM seed
    """,
    f"""
    INSERT INTO delivery_attempts (id, created_at, delivery_id, event_id, subscription_id,
        target_url, event_type, attempt_number, status_code, status, error_details,
        duration_ms, response_excerpt, trigger, first_received_at, application_id)
    SELECT gen_random_uuid(),
           received_at + (ARRAY[0.2, 10, 70, 370])[n] * interval '1 second',
           md5('dl' || g)::uuid, event_id, sub,
           'https://hooks.example.test/' || (g / 100 % {SUBSCRIPTIONS}), event_type, n,
           CASE WHEN {_STATUS} = 'SUCCESS' THEN 200 ELSE 503 END, {_STATUS},
           CASE WHEN {_STATUS} = 'SUCCESS' THEN NULL ELSE 'HTTP 503' END,
           20 + g % 180, 'ok', 'ingest', received_at, app
    FROM seed CROSS JOIN LATERAL generate_series(1, {_ATTEMPTS}) AS n
    """,  # noqa: S608
    "DROP TABLE seed",
    "ANALYZE applications",
    "ANALYZE subscriptions",
    "ANALYZE events",
    "ANALYZE delivery_attempts",
]


async def load(stack: IsolatedStack) -> int:
    """Seeds the data set; returns the number of attempt rows."""
    conn = await asyncpg.connect(asyncpg_dsn(stack.settings()))
    try:
        for statement in LOAD:
            await conn.execute(statement)
        return int(await conn.fetchval("SELECT count(*) FROM delivery_attempts"))
    finally:
        await conn.close()


def _cursor_at(hours_ago: float) -> str:
    """A cursor as a page ending ``hours_ago`` would give (a deep page without walking)."""
    when = datetime.now(UTC) - timedelta(hours=hours_ago)
    return encode_cursor(when, uuid.UUID(int=(1 << 128) - 1))


def _pages(app_id: str, sub: str) -> dict[str, tuple[str, dict[str, str], str]]:
    """metric -> (path, params, note); ``scoped_`` ones use the application's key."""
    deep = _cursor_at(48)
    return {
        "deliveries_first_ms": ("/status/deliveries", {}, "newest 50 deliveries"),
        "deliveries_deep_ms": ("/status/deliveries", {"cursor": deep}, "a page 48 h back"),
        "deliveries_failure_ms": (
            "/status/deliveries",
            {"status": "FAILURE"},
            "status=FAILURE (3 % of deliveries)",
        ),
        "deliveries_retrying_deep_ms": (
            "/status/deliveries",
            {"status": "FAILED_ATTEMPT", "cursor": _cursor_at(2)},
            "status=FAILED_ATTEMPT past the last still retrying: every candidate "
            "superseded, an empty page that ends at the scan budget (the worst case)",
        ),
        "deliveries_event_type_deep_ms": (
            "/status/deliveries",
            {"event_type": RARE_TYPE, "cursor": deep},
            "a rare event type (1 in 1,000), 48 h back",
        ),
        "deliveries_window_ms": (
            "/status/deliveries",
            {
                "since": (datetime.now(UTC) - timedelta(hours=30)).isoformat(),
                "until": (datetime.now(UTC) - timedelta(hours=29)).isoformat(),
            },
            "since/until: one hour, 29 h back",
        ),
        "deliveries_subscription_ms": (
            "/status/deliveries",
            {"subscription_id": sub},
            "one subscription's (of 1,000)",
        ),
        "scoped_deliveries_first_ms": (
            "/status/deliveries",
            {},
            f"an application's key (1 of {APPLICATIONS}): its newest 50",
        ),
        "scoped_deliveries_retrying_ms": (
            "/status/deliveries",
            {"status": "FAILED_ATTEMPT"},
            "an application's key, status=FAILED_ATTEMPT",
        ),
        "events_first_ms": ("/status/events", {}, "newest 50 events"),
        "events_deep_ms": ("/status/events", {"cursor": deep}, "a page 48 h back"),
        "events_event_type_deep_ms": (
            "/status/events",
            {"event_type": RARE_TYPE, "cursor": deep},
            "a rare event type, 48 h back",
        ),
        "events_application_ms": (
            "/status/events",
            {"application_id": app_id},
            "one application's (operator key)",
        ),
        "scoped_events_event_type_ms": (
            "/status/events",
            {"event_type": TYPES[1]},
            "an application's key and an event type",
        ),
    }


def _timed(client: httpx.Client, path: str, params: dict[str, str]) -> float:
    start = time.perf_counter()
    r = client.get(path, params={**params, "limit": str(PAGE)})
    elapsed = (time.perf_counter() - start) * 1000
    assert r.status_code == 200, (path, params, r.status_code, r.text[:500])
    return elapsed


def _row(metric: str, samples: list[float], note: str) -> dict[str, Any]:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(f"[bench] search {metric}: p50 {p50:.1f} ms, p99 {p99:.1f} ms", file=sys.stderr)
    return {
        "section": SECTION,
        "metric": metric,
        "value": round(p50, 2),
        "unit": "ms",
        "note": f"{note}; p50, p99 {p99:.1f} ms over {len(samples)} requests (target < 50)",
    }


def run(stack: IsolatedStack) -> list[dict[str, Any]]:
    t0 = time.monotonic()
    attempts = asyncio.run(load(stack))
    load_s = time.monotonic() - t0
    rows: list[dict[str, Any]] = []
    server = IngestServer(
        stack, Path(tempfile.mkdtemp(prefix="bench-search-")), HOOKSTREAM_LOG_LEVEL="WARNING"
    )
    try:
        server.wait_healthy()
        with httpx.Client(base_url=server.url, timeout=30, headers=server.auth) as op:
            app = op.get(f"/applications/search-{APPLICATIONS // 2}").json()
            key = op.post(f"/applications/{app['uid']}/api-keys", json={"name": "bench"})
            assert key.status_code == 201, key.text
            sub = op.get(
                "/status/deliveries", params={"application_id": app["id"], "limit": "1"}
            ).json()["data"][0]["subscription_id"]
        scoped_headers = {"Authorization": f"Bearer {key.json()['key']}"}
        with (
            httpx.Client(base_url=server.url, timeout=30, headers=server.auth) as op,
            httpx.Client(base_url=server.url, timeout=30, headers=scoped_headers) as scoped,
        ):
            for metric, (path, params, note) in _pages(app["id"], sub).items():
                client = scoped if metric.startswith("scoped_") else op
                for _ in range(WARMUP):
                    _timed(client, path, params)
                samples = [_timed(client, path, params) for _ in range(REQUESTS)]
                rows.append(_row(metric, samples, note))
    finally:
        server.stop()
    rows.append(
        {
            "section": SECTION,
            "metric": "load_s",
            "value": round(load_s, 1),
            "unit": "s",
            "note": f"{attempts:,} attempts of {DELIVERIES:,} deliveries and events over "
            f"{HOURS} h, {APPLICATIONS} applications, {SUBSCRIPTIONS:,} subscriptions "
            "(set-based INSERT ... SELECT, every index of migration 0010 in place)",
        }
    )
    return rows
