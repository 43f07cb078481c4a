"""Janitor section: how long one pass takes to prune millions of expired attempt rows.

Loads rows into 12 expired 6 h partitions of ``delivery_attempts`` (generated server-side
with generate_series into unattached tables, then ATTACHed, which builds the indexes in
bulk: far faster than row-by-row index upkeep), plus live rows that must survive, then
times one janitor pass. It does this twice, with 10x the rows the second time: if pruning
were row deletes the time would grow tenfold; dropping partitions it should not.

Run alone: ``python -m bench janitor`` (or call ``run(stack)`` with a started stack).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from services.janitor.housekeeping import run_once
from services.janitor.partitions import align_down, partition_name, ts_literal
from shared.db import asyncpg_dsn, make_engine
from shared.settings import Settings
from tests.support.stack import IsolatedStack

SECTION = "janitor"
WIDTH = timedelta(hours=6)
RETENTION_HOURS = 24
PARTITIONS = 12
ROUNDS = (300_000, 3_000_000)  # expired rows per round
LIVE_ROWS = 50_000  # recent rows in the current partition; they must all survive

COLUMNS = (
    "id, created_at, delivery_id, event_id, subscription_id, target_url, event_type, "
    "attempt_number, status_code, status, error_details, duration_ms, response_excerpt, trigger"
)
# Rows shaped like real attempts: 100 subscriptions, 1 in 10 a failed attempt. Only the
# table name is formatted in, and only names this module makes.
GENERATE = f"""
INSERT INTO {{table}} ({COLUMNS})
SELECT gen_random_uuid(),
       $1::timestamptz + (g * $2::float8 / $3) * interval '1 second',
       gen_random_uuid(), gen_random_uuid(),
       ('00000000-0000-4000-8000-' || lpad((g % 100)::text, 12, '0'))::uuid,
       'https://hooks.example.test/' || (g % 100), 'order.paid',
       1 + g % 3,
       CASE WHEN g % 10 = 0 THEN 503 ELSE 200 END,
       CASE WHEN g % 10 = 0 THEN 'FAILED_ATTEMPT' ELSE 'SUCCESS' END,
       CASE WHEN g % 10 = 0 THEN 'HTTP 503' END,
       g % 500, 'ok', 'ingest'
FROM generate_series(0, $3 - 1) AS g
"""  # noqa: S608


async def _load_expired(conn: asyncpg.Connection, now: datetime, rows: int) -> None:
    """``rows`` rows spread over PARTITIONS partitions, all ending before now - retention
    and before the oldest partition that exists (so none overlaps it)."""
    oldest: datetime | None = await conn.fetchval(
        "SELECT min((regexp_match(pg_get_expr(c.relpartbound, c.oid), "
        "'FROM \\(''([^'']*)''\\)'))[1]::timestamptz) "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'delivery_attempts'::regclass"
    )
    end = align_down(now - timedelta(hours=RETENTION_HOURS), WIDTH)
    newest = min(end, oldest or end) - WIDTH
    per_partition = rows // PARTITIONS
    for k in range(PARTITIONS):
        lower = newest - k * WIDTH
        name = partition_name("delivery_attempts", lower)
        await conn.execute(
            f'CREATE TABLE "{name}" '
            "(LIKE delivery_attempts INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        )
        await conn.execute(
            GENERATE.format(table=f'"{name}"'), lower, WIDTH.total_seconds(), per_partition
        )
        # DDL takes no bind parameters; the bounds are datetimes computed here.
        await conn.execute(
            f'ALTER TABLE delivery_attempts ATTACH PARTITION "{name}" '
            f"FOR VALUES FROM ({ts_literal(lower)}) TO ({ts_literal(lower + WIDTH)})"
        )


async def _prune(settings: Settings) -> tuple[float, int, int]:
    """One janitor pass: (wall seconds, partitions dropped, partitions created)."""
    engine = make_engine(settings, pool_size=1)
    try:
        started = time.perf_counter()
        report = await run_once(engine, None, settings)
        seconds = time.perf_counter() - started
    finally:
        await engine.dispose()
    assert not report.skipped
    dropped = sum(len(t.dropped) for t in report.tables.values())
    created = sum(len(t.created) for t in report.tables.values())
    return seconds, dropped, created


async def _run(stack: IsolatedStack) -> list[dict[str, Any]]:
    settings = stack.settings(retention_hours=RETENTION_HOURS, partition_width="6h")
    conn = await asyncpg.connect(asyncpg_dsn(settings))
    rows: list[dict[str, Any]] = []
    try:
        await _prune(settings)  # settle the layout: later passes only drop what we load
        idle, _, _ = await _prune(settings)
        rows.append(
            {
                "section": SECTION,
                "metric": "idle_pass_seconds",
                "value": round(idle, 4),
                "unit": "s",
                "note": "a pass with nothing to drop or create (catalog reads, advisory lock)",
            }
        )
        now: datetime = await conn.fetchval("SELECT now()")
        await conn.execute(GENERATE.format(table="delivery_attempts"), now, 1.0, LIVE_ROWS)
        for expired_rows in ROUNDS:
            started = time.perf_counter()
            await _load_expired(conn, now, expired_rows)
            await conn.execute("ANALYZE delivery_attempts")
            load = time.perf_counter() - started
            total = await conn.fetchval("SELECT count(*) FROM delivery_attempts")
            size = await conn.fetchval(
                "SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))) "
                "FROM pg_inherits WHERE inhparent = 'delivery_attempts'::regclass"
            )
            seconds, dropped, created = await _prune(settings)
            left = await conn.fetchval("SELECT count(*) FROM delivery_attempts")
            if left != LIVE_ROWS or dropped != PARTITIONS or created:
                raise RuntimeError(
                    f"prune went wrong: {left} rows left (want {LIVE_ROWS}), "
                    f"{dropped} partitions dropped (want {PARTITIONS}), {created} created"
                )
            rows.append(
                {
                    "section": SECTION,
                    "metric": "prune_seconds",
                    "value": round(seconds, 4),
                    "unit": "s",
                    "note": (
                        f"{total - LIVE_ROWS:,} expired rows (table {size} with indexes), "
                        f"{dropped} partitions dropped, {LIVE_ROWS:,} live rows kept; "
                        f"load took {load:.1f} s"
                    ),
                }
            )
    finally:
        await conn.close()
    return rows


def run(stack: IsolatedStack) -> list[dict[str, Any]]:
    return asyncio.run(_run(stack))


if __name__ == "__main__":
    isolated = IsolatedStack()
    isolated.up()
    try:
        for row in run(isolated):
            print(row)
    finally:
        isolated.down()
