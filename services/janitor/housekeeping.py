"""One janitor pass: retention under an advisory lock, then Redis key counts.

Several janitors may run at once (a deploy overlapping the old process, `make run` calling
``--once`` while one loops). Only the holder of the advisory lock works; the others skip
their pass and say so, since a pass a moment later finds nothing to do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.janitor.cache_keys import KeyCount, count_keys
from services.janitor.retention import TableReport, enforce_retention
from shared.settings import Settings

# The subscription change log only serves processes polling it (shared/subscriptions.py),
# which read what is newer than their last poll, a second or so back; an hour of it is
# plenty even for a process that was paused, and keeps the table small.
CHANGE_LOG_KEPT = timedelta(hours=1)
# Ended or expired browser sessions and used or expired portal links open nothing; a day
# of them is kept for whoever asks "was that link used?".
SESSIONS_KEPT = timedelta(days=1)
# None: kept as long as delivery attempts (HOOKSTREAM_RETENTION_HOURS). An ordered
# subscription's finished jobs only serve to recognise a job read again after a crash.
_PRUNE: dict[str, tuple[str, timedelta | None]] = {
    "subscription_changes": (
        "DELETE FROM subscription_changes WHERE changed_at < :c",
        CHANGE_LOG_KEPT,
    ),
    "web_sessions": (
        "DELETE FROM web_sessions WHERE coalesce(ended_at, expires_at) < :c",
        SESSIONS_KEPT,
    ),
    "portal_links": (
        "DELETE FROM portal_links WHERE coalesce(used_at, expires_at) < :c",
        SESSIONS_KEPT,
    ),
    "ordered_jobs": ("DELETE FROM ordered_jobs WHERE done_at < :c", None),
}

# Session-level advisory lock key, fixed for every janitor on a database: the ASCII bytes
# of "hookjani" read as a signed 64-bit integer.
ADVISORY_LOCK_KEY = 0x686F6F6B6A616E69


@dataclass(slots=True)
class JanitorReport:
    skipped: bool
    now: datetime | None = None
    retention_hours: int | None = None
    tables: dict[str, TableReport] = field(default_factory=dict)
    pruned: dict[str, int] = field(default_factory=dict)
    redis_keys: dict[str, KeyCount] | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: what the janitor logs after each pass."""
        return {
            "skipped": self.skipped,
            "now": self.now.isoformat() if self.now else None,
            "retention_hours": self.retention_hours,
            "tables": {name: t.as_dict() for name, t in self.tables.items()},
            "pruned": self.pruned,
            "redis_keys": (
                {n: {"count": k.count, "complete": k.complete} for n, k in self.redis_keys.items()}
                if self.redis_keys is not None
                else None
            ),
            "seconds": round(self.seconds, 4),
        }


async def run_once(
    engine: AsyncEngine,
    redis: Redis | None,
    settings: Settings,
    *,
    now: datetime | None = None,
) -> JanitorReport:
    """One pass. ``now`` defaults to the database clock, so every janitor process judges
    age by the same clock; tests pass a fixed instant."""
    started = time.perf_counter()
    async with engine.connect() as conn:
        if not await _try_lock(conn):
            return JanitorReport(skipped=True, seconds=time.perf_counter() - started)
        try:
            if now is None:
                now = await _db_now(conn)
            tables = await enforce_retention(conn, settings, now)
            pruned = await _prune(conn, now, timedelta(hours=settings.retention_hours))
        finally:
            await _unlock(conn)
    report = JanitorReport(
        skipped=False,
        now=now,
        retention_hours=settings.retention_hours,
        tables=tables,
        pruned=pruned,
    )
    if redis is not None:
        report.redis_keys = await count_keys(redis)
    report.seconds = time.perf_counter() - started
    return report


async def _prune(conn: AsyncConnection, now: datetime, retention: timedelta) -> dict[str, int]:
    """Rows that only served for a while: the change log, dead sessions and links,
    finished ordered jobs."""
    counts = {}
    async with conn.begin():
        for table, (statement, kept) in _PRUNE.items():
            result = await conn.execute(text(statement), {"c": now - (kept or retention)})
            counts[table] = int(result.rowcount)
    return counts


async def _db_now(conn: AsyncConnection) -> datetime:
    async with conn.begin():
        now: datetime = (await conn.execute(text("SELECT now()"))).scalar_one()
        return now


async def _try_lock(conn: AsyncConnection) -> bool:
    async with conn.begin():
        result = await conn.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
        )
        return bool(result.scalar_one())


async def _unlock(conn: AsyncConnection) -> None:
    try:
        async with conn.begin():
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
    except Exception:
        # A session lock must never go back to the pool still held: drop the connection,
        # which makes the server release it.
        await conn.invalidate()
        raise
