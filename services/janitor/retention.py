"""Retention for the time-partitioned tables: drop what expired, create what comes next.

Per table, each run:

1. DROP the partitions whose upper bound is at or before ``now - retention``. A row at
   time t sits in a partition whose upper bound is at most t + width, so no row older than
   retention + one width survives a run, and the cost is one catalog change per partition
   whatever the number of rows.
2. Delete rows older than the cutoff from the DEFAULT partition, in batches. Rows land
   there only when their range had no partition, so it holds few rows; this is the one
   place the janitor deletes rows.
3. Create the partitions from one width ago to ``partitions_ahead`` widths ahead, plus any
   range still within retention where the DEFAULT partition holds rows; those rows move
   into the new partition in the same transaction (see ``create_partition_from_default``).

Each step that changes a partition layout is its own short transaction and waits at most
``LOCK_TIMEOUT_MS`` for its locks: see the comment there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.janitor import partitions as parts
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger("janitor.retention")

T = TypeVar("T")

# DROP and CREATE ... PARTITION OF take an ACCESS EXCLUSIVE lock on the parent table, and
# a queued ACCESS EXCLUSIVE request makes every later reader and writer of the table wait
# behind it. So the janitor gives up after 2 s instead of stalling the attempt writer
# behind a long status query; the step is retried on the next run (every 5 min by default,
# while partitions exist 8 widths = 48 h ahead), so a skipped step costs nothing.
LOCK_TIMEOUT_MS = 2000
# lock_not_available, deadlock_detected: both mean "try again next run".
_RETRY_NEXT_RUN = frozenset({"55P03", "40P01"})

# The DEFAULT partition is pruned in batches of 10,000 rows (a few ms each), each its own
# transaction, and at most 1,000,000 rows per run: if it ever holds more, something
# wrote far outside the partitioned ranges and an operator should look (it is logged).
DEFAULT_DELETE_BATCH = 10_000
DEFAULT_DELETE_MAX_BATCHES = 100
# Rows left in the DEFAULT partition are counted up to this many (a bounded scan).
DEFAULT_COUNT_CAP = 100_000

# Partition names carry the lower bound to the second; widths under a minute would also
# mean over 1,440 partitions a day, more than PostgreSQL plans comfortably.
MIN_WIDTH = timedelta(minutes=1)


@dataclass(slots=True)
class TableReport:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    default_moved: int = 0
    default_deleted: int = 0
    default_rows_left: int = 0
    # Steps left for the next run because a lock was not granted in time.
    deferred: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def check_width(width: timedelta) -> timedelta:
    if width < MIN_WIDTH or width.microseconds:
        raise ValueError(f"partition_width must be whole seconds and >= 1m, got {width}")
    return width


def slots_ahead(now: datetime, width: timedelta, ahead: int, cutoff: datetime) -> list[datetime]:
    """Slot starts from one width ago to ``ahead`` widths past now, skipping any slot that
    would already be expired (retention shorter than a width)."""
    slots = []
    lo = parts.align_down(now - width, width)
    while lo < now + width * ahead:
        if lo + width > cutoff:
            slots.append(lo)
        lo += width
    return slots


@dataclass(frozen=True, slots=True)
class _Window:
    now: datetime
    cutoff: datetime  # rows before it are past retention
    horizon: datetime  # partitions exist up to here
    width: timedelta
    ahead: int


async def enforce_retention(
    conn: AsyncConnection, settings: Settings, now: datetime
) -> dict[str, TableReport]:
    """Run the three steps for every partitioned table. ``conn`` must be outside a
    transaction; the caller holds the janitor's advisory lock on it."""
    width = check_width(settings.partition_width)
    window = _Window(
        now=now,
        cutoff=now - timedelta(hours=settings.retention_hours),
        horizon=now + width * settings.partitions_ahead,
        width=width,
        ahead=settings.partitions_ahead,
    )
    return {parent: await _retain(conn, parent, window) for parent in parts.PARTITION_KEYS}


async def _retain(conn: AsyncConnection, parent: str, window: _Window) -> TableReport:
    report = TableReport()
    dropped = await _step(conn, parent, "drop", report, lambda: _drop(conn, parent, window.cutoff))
    report.dropped = dropped or []

    async with conn.begin():
        has_default = any(p.is_default for p in await parts.read_partitions(conn, parent))
    if has_default:
        report.default_deleted = await _prune_default(conn, parent, window.cutoff)

    created = await _step(
        conn, parent, "create", report, lambda: _create(conn, parent, window, has_default)
    )
    if created is not None:
        report.created, report.default_moved = created.names, created.moved
    if has_default:
        async with conn.begin():
            report.default_rows_left = await parts.count_default(conn, parent, DEFAULT_COUNT_CAP)
    return report


@dataclass(slots=True)
class _Created:
    names: list[str]
    moved: int


async def _step(
    conn: AsyncConnection,
    parent: str,
    step: str,
    report: TableReport,
    work: Callable[[], Awaitable[T]],
) -> T | None:
    """Run one layout change in its own transaction with a lock timeout; a lock not granted
    in time defers the step to the next run instead of failing the whole run."""
    try:
        async with conn.begin():
            await conn.exec_driver_sql(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
            return await work()
    except DBAPIError as exc:
        code = getattr(exc.orig, "sqlstate", None)
        if code not in _RETRY_NEXT_RUN:
            raise
        log.warning("janitor step deferred to next run", table=parent, step=step, sqlstate=code)
        report.deferred.append(step)
        return None


async def _lock(conn: AsyncConnection, *tables: str) -> None:
    # Parent before partition, the order inserts take them in, so the janitor cannot
    # deadlock with a writer.
    for table in tables:
        await conn.exec_driver_sql(
            f"LOCK TABLE ONLY {parts.quote_ident(table)} IN ACCESS EXCLUSIVE MODE"
        )


async def _drop(conn: AsyncConnection, parent: str, cutoff: datetime) -> list[str]:
    doomed = parts.expired(await parts.read_partitions(conn, parent), cutoff)
    if not doomed:
        return []
    await _lock(conn, parent)
    # Read again under the lock: the layout we act on is the one we hold.
    names = [p.name for p in parts.expired(await parts.read_partitions(conn, parent), cutoff)]
    await parts.drop_partitions(conn, names)
    return names


async def _prune_default(conn: AsyncConnection, parent: str, cutoff: datetime) -> int:
    deleted = 0
    for _ in range(DEFAULT_DELETE_MAX_BATCHES):
        async with conn.begin():
            batch = await parts.delete_from_default_before(
                conn, parent, cutoff, DEFAULT_DELETE_BATCH
            )
        deleted += batch
        if batch < DEFAULT_DELETE_BATCH:
            return deleted
    log.warning(
        "default partition still holds expired rows after the per-run cap",
        table=parent,
        deleted=deleted,
    )
    return deleted


async def _create(
    conn: AsyncConnection, parent: str, window: _Window, has_default: bool
) -> _Created:
    width = window.width
    slots = slots_ahead(window.now, width, window.ahead, window.cutoff)
    if has_default:
        slots += await parts.default_slots(conn, parent, width, window.cutoff, window.horizon)
    if not parts.missing_ranges(await parts.read_partitions(conn, parent), slots, width):
        return _Created([], 0)
    if has_default:
        await _lock(conn, parent, parts.default_name(parent))
        # Rows may have landed in the default partition before the lock was granted.
        slots += await parts.default_slots(conn, parent, width, window.cutoff, window.horizon)
    else:
        await _lock(conn, parent)
    gaps = parts.missing_ranges(await parts.read_partitions(conn, parent), slots, width)
    taken = await parts.taken_names(conn, parent)
    columns = await parts.column_names(conn, parent)
    created = _Created([], 0)
    for lower, upper in gaps:
        name = parts.unique_name(parent, lower, taken)
        if has_default and await parts.default_holds_rows(conn, parent, lower, upper):
            created.moved += await parts.create_partition_from_default(
                conn, parent, name, lower, upper, columns
            )
        else:
            await parts.create_partition(conn, parent, name, lower, upper)
        created.names.append(name)
    return created
