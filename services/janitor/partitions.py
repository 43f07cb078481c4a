"""Time partitions: bounds read from pg_catalog, slot arithmetic, and the DDL that changes them.

Partitions are ``[lower, upper)`` ranges aligned on ``partition_width`` from the Unix epoch
and named ``<parent>_pYYYYMMDD_HHMMSS`` (UTC lower bound), the same scheme as the SQL
function ``hookstream_ensure_partitions`` in migration 0001. Names are only labels: every
decision here uses the bounds PostgreSQL stores (``pg_get_expr(relpartbound)``), so
partitions made under an older width, or by hand, are handled by what they really cover.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The time column each partitioned table is ranged on (migration 0001).
PARTITION_KEYS = {"events": "received_at", "delivery_attempts": "created_at"}


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    # None means unbounded (MINVALUE / MAXVALUE); both None with is_default for DEFAULT.
    lower: datetime | None
    upper: datetime | None
    is_default: bool = False


def align_down(ts: datetime, width: timedelta) -> datetime:
    """Start of the epoch-aligned slot of ``width`` that holds ``ts``."""
    return EPOCH + ((ts - EPOCH) // width) * width


def partition_name(parent: str, lower: datetime) -> str:
    return f"{parent}_p{lower.astimezone(UTC):%Y%m%d_%H%M%S}"


def default_name(parent: str) -> str:
    return f"{parent}_default"


def expired(partitions: Iterable[Partition], cutoff: datetime) -> list[Partition]:
    """Range partitions whose every row is older than ``cutoff`` (upper bound <= cutoff)."""
    return [p for p in partitions if not p.is_default and p.upper is not None and p.upper <= cutoff]


def missing_ranges(
    partitions: Sequence[Partition], slots: Iterable[datetime], width: timedelta
) -> list[tuple[datetime, datetime]]:
    """The parts of the slots ``[lo, lo + width)`` that no existing partition covers.

    A slot already covered in part (say by a 6 h partition left from before the width was
    changed to 1 h) yields only the uncovered pieces, so the new partition never overlaps
    an old one (PostgreSQL would refuse it).
    """
    covered = sorted(
        (p.lower or datetime.min.replace(tzinfo=UTC), p.upper or datetime.max.replace(tzinfo=UTC))
        for p in partitions
        if not p.is_default
    )
    gaps: list[tuple[datetime, datetime]] = []
    for lo in sorted(set(slots)):
        start, end = lo, lo + width
        for c_lo, c_hi in covered:
            if c_hi <= start or c_lo >= end:
                continue
            if c_lo > start:
                gaps.append((start, c_lo))
            start = max(start, c_hi)
            if start >= end:
                break
        if start < end:
            gaps.append((start, end))
    return gaps


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def ts_literal(ts: datetime) -> str:
    """A timestamptz literal for DDL, which takes no bind parameters. Only ever built
    from datetimes this module computed, never from outside input."""
    return "'" + ts.astimezone(UTC).isoformat(sep=" ") + "'"


# Bounds are cast back to timestamptz in the same session that printed them, so the
# session's TimeZone and DateStyle cannot skew the round trip.
_PARTITIONS_SQL = text(
    """
    SELECT c.relname AS name,
           b.expr = 'DEFAULT' AS is_default,
           CAST((regexp_match(b.expr, 'FROM \\(''([^'']*)''\\)'))[1] AS timestamptz) AS lower,
           CAST((regexp_match(b.expr, 'TO \\(''([^'']*)''\\)'))[1] AS timestamptz) AS upper
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS expr) b
    WHERE i.inhparent = CAST(:parent AS regclass)
    ORDER BY lower NULLS FIRST
    """
)


async def read_partitions(conn: AsyncConnection, parent: str) -> list[Partition]:
    rows = (await conn.execute(_PARTITIONS_SQL, {"parent": parent})).all()
    return [Partition(r.name, r.lower, r.upper, bool(r.is_default)) for r in rows]


async def taken_names(conn: AsyncConnection, parent: str) -> set[str]:
    """Relation names in the parent's schema that a new partition could collide with."""
    rows = await conn.execute(
        text(
            "SELECT c.relname FROM pg_class c "
            "WHERE c.relnamespace = (SELECT relnamespace FROM pg_class "
            "WHERE oid = CAST(:parent AS regclass)) AND starts_with(c.relname, :prefix)"
        ),
        {"parent": parent, "prefix": f"{parent}_p"},
    )
    return set(rows.scalars())


def unique_name(parent: str, lower: datetime, taken: set[str]) -> str:
    name = partition_name(parent, lower)
    suffix = 1
    candidate = name
    while candidate in taken:
        suffix += 1
        candidate = f"{name}_{suffix}"
    taken.add(candidate)
    return candidate


async def column_names(conn: AsyncConnection, parent: str) -> list[str]:
    rows = await conn.execute(
        text(
            "SELECT attname FROM pg_attribute WHERE attrelid = CAST(:parent AS regclass) "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        ),
        {"parent": parent},
    )
    return list(rows.scalars())


async def create_partition(
    conn: AsyncConnection, parent: str, name: str, lower: datetime, upper: datetime
) -> None:
    await conn.exec_driver_sql(
        f"CREATE TABLE {quote_ident(name)} PARTITION OF {quote_ident(parent)} "
        f"FOR VALUES FROM ({ts_literal(lower)}) TO ({ts_literal(upper)})"
    )


async def create_partition_from_default(
    conn: AsyncConnection,
    parent: str,
    name: str,
    lower: datetime,
    upper: datetime,
    columns: Sequence[str],
) -> int:
    """Create the partition for ``[lower, upper)`` holding the rows the DEFAULT partition has
    in that range; returns how many moved.

    PostgreSQL refuses to add a partition while the default one holds rows of its range.
    So, inside the caller's transaction: build the table unattached, move the rows into it
    with one DELETE ... RETURNING, then ATTACH (which builds the indexes and re-checks that
    the default partition no longer holds any of the range). Either all of it commits or
    none of it does: no row can be lost or doubled.
    """
    key = quote_ident(PARTITION_KEYS[parent])
    cols = ", ".join(quote_ident(c) for c in columns)
    await conn.exec_driver_sql(
        f"CREATE TABLE {quote_ident(name)} "
        f"(LIKE {quote_ident(parent)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    result = await conn.exec_driver_sql(
        f"WITH moved AS (DELETE FROM {quote_ident(default_name(parent))} "  # noqa: S608
        f"WHERE {key} >= {ts_literal(lower)} AND {key} < {ts_literal(upper)} "
        f"RETURNING {cols}) "
        f"INSERT INTO {quote_ident(name)} ({cols}) SELECT {cols} FROM moved"
    )
    await conn.exec_driver_sql(
        f"ALTER TABLE {quote_ident(parent)} ATTACH PARTITION {quote_ident(name)} "
        f"FOR VALUES FROM ({ts_literal(lower)}) TO ({ts_literal(upper)})"
    )
    return int(result.rowcount)


async def default_holds_rows(
    conn: AsyncConnection, parent: str, lower: datetime, upper: datetime
) -> bool:
    key = quote_ident(PARTITION_KEYS[parent])
    result = await conn.execute(
        text(
            f"SELECT EXISTS (SELECT 1 FROM {quote_ident(default_name(parent))} "  # noqa: S608
            f"WHERE {key} >= :lo AND {key} < :hi)"
        ),
        {"lo": lower, "hi": upper},
    )
    return bool(result.scalar_one())


async def default_slots(
    conn: AsyncConnection, parent: str, width: timedelta, start: datetime, end: datetime
) -> list[datetime]:
    """Slots in ``[start, end)`` where the DEFAULT partition holds rows.

    Reads the default partition whole; that is cheap because the janitor keeps it nearly
    empty (only rows that arrived while their range was missing land there).
    """
    key = quote_ident(PARTITION_KEYS[parent])
    result = await conn.execute(
        text(
            f"SELECT DISTINCT floor(extract(epoch FROM {key}) / :w) "  # noqa: S608
            f"FROM {quote_ident(default_name(parent))} WHERE {key} >= :lo AND {key} < :hi"
        ),
        {"w": width.total_seconds(), "lo": start, "hi": end},
    )
    return [EPOCH + int(slot) * width for slot in result.scalars()]


async def delete_from_default_before(
    conn: AsyncConnection, parent: str, cutoff: datetime, limit: int
) -> int:
    """Delete up to ``limit`` rows older than ``cutoff`` from the DEFAULT partition."""
    default = quote_ident(default_name(parent))
    key = quote_ident(PARTITION_KEYS[parent])
    result = await conn.execute(
        text(
            f"DELETE FROM {default} WHERE ctid = ANY(ARRAY("  # noqa: S608
            f"SELECT ctid FROM {default} WHERE {key} < :cutoff LIMIT :limit))"
        ),
        {"cutoff": cutoff, "limit": limit},
    )
    return int(result.rowcount)


async def count_default(conn: AsyncConnection, parent: str, cap: int) -> int:
    """Rows left in the DEFAULT partition, counted up to ``cap`` so the count stays cheap."""
    result = await conn.execute(
        text(
            f"SELECT count(*) FROM (SELECT 1 FROM {quote_ident(default_name(parent))} "  # noqa: S608
            "LIMIT :cap) s"
        ),
        {"cap": cap},
    )
    return int(result.scalar_one())


async def drop_partitions(conn: AsyncConnection, names: Sequence[str]) -> None:
    if names:
        await conn.exec_driver_sql("DROP TABLE " + ", ".join(quote_ident(n) for n in names))
