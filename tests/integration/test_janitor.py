"""The janitor against real PostgreSQL and Redis: retention, partitions ahead, the DEFAULT
partition, and several janitors at once.

Each test gets its own database, copied from a template migrated once by Alembic, because
these tests reshape the partition layout and drop tables; the session database other
tests use is left alone. Partition width 1 h, retention 2 h, 3 partitions ahead.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from structlog.testing import capture_logs

from services.janitor.__main__ import run as janitor_main
from services.janitor.housekeeping import ADVISORY_LOCK_KEY, JanitorReport, run_once
from shared.db import asyncpg_dsn, make_engine
from shared.redis import make_redis
from shared.settings import Settings
from tests.support.procs import ServiceProcess, free_port
from tests.support.stack import IsolatedStack, admin_dsn, migrate

H = timedelta(hours=1)
RETENTION = 2 * H
AHEAD = 3
TABLES = {"delivery_attempts": "created_at", "events": "received_at"}


async def _admin(stack: IsolatedStack, sql: str) -> None:
    conn = await asyncpg.connect(admin_dsn(stack.database_url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _url(stack: IsolatedStack, name: str) -> str:
    return stack.database_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="module")
def template_db(stack: IsolatedStack) -> Iterator[str]:
    name = f"{stack.db_name}_jtpl"
    asyncio.run(_admin(stack, f'CREATE DATABASE "{name}"'))
    migrate(_url(stack, name))
    yield name
    asyncio.run(_admin(stack, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class Db:
    settings: Settings
    conn: asyncpg.Connection


@pytest.fixture
async def db(stack: IsolatedStack, template_db: str) -> AsyncIterator[Db]:
    name = f"{stack.db_name}_j{secrets.token_hex(3)}"
    await _admin(stack, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    settings = stack.settings(
        database_url=_url(stack, name),
        retention_hours=2,
        partition_width="1h",
        partitions_ahead=AHEAD,
    )
    conn = await asyncpg.connect(asyncpg_dsn(settings))
    try:
        yield Db(settings, conn)
    finally:
        await conn.close()
        await _admin(stack, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _janitor(settings: Settings, now: datetime | None = None) -> JanitorReport:
    engine = make_engine(settings, pool_size=1)
    redis = make_redis(settings)
    try:
        return await run_once(engine, redis, settings, now=now)
    finally:
        await redis.aclose()
        await engine.dispose()


def _hour(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


async def _layout(
    conn: asyncpg.Connection, start: datetime | None = None, end: datetime | None = None
) -> None:
    """Replace the migration's 6 h partitions by 1 h ones over [start, end), as if a janitor
    with this width had been running; with no range, leave only the DEFAULT partitions."""
    for table in TABLES:
        names = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = $1::regclass AND c.relname <> $2",
            table,
            f"{table}_default",
        )
        for row in names:
            await conn.execute(f'DROP TABLE "{row["relname"]}"')
        if start is None or end is None:
            continue
        await conn.execute(
            "SELECT hookstream_ensure_partitions($1, interval '1 hour', $2, $3)",
            table,
            start,
            end,
        )


async def _insert(conn: asyncpg.Connection, ts: datetime) -> uuid.UUID:
    """One attempt and one event stamped ``ts``, sharing an id."""
    row_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO delivery_attempts (id, created_at, delivery_id, event_id, subscription_id,"
        " target_url, event_type, attempt_number, status_code, status, duration_ms)"
        " VALUES ($1, $2, gen_random_uuid(), $1, gen_random_uuid(), 'http://t.test/h',"
        " 'order.paid', 1, 200, 'SUCCESS', 12)",
        row_id,
        ts,
    )
    await conn.execute(
        "INSERT INTO events (id, received_at, event_type, content_type, body)"
        " VALUES ($1, $2, 'order.paid', 'application/json', $3)",
        row_id,
        ts,
        b'{"exact":  "bytes", "id": "' + str(row_id).encode() + b'"}',
    )
    return row_id


async def _rows(conn: asyncpg.Connection, table: str) -> dict[uuid.UUID, tuple[object, ...]]:
    """Every row of ``table`` by id: (partition it lives in, the row's full content)."""
    sql = f"SELECT tableoid::regclass::text AS part, t.* FROM {table} t"  # noqa: S608
    records = await conn.fetch(sql)
    return {r["id"]: (r["part"], tuple(r.values())[1:]) for r in records}


async def _partitions(conn: asyncpg.Connection, table: str) -> dict[str, tuple[datetime, datetime]]:
    records = await conn.fetch(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS b FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::regclass",
        table,
    )
    out = {}
    for r in records:
        if r["b"] == "DEFAULT":
            continue
        lo, hi = await conn.fetchrow(
            "SELECT (regexp_match($1, 'FROM \\(''([^'']*)''\\)'))[1]::timestamptz, "
            "(regexp_match($1, 'TO \\(''([^'']*)''\\)'))[1]::timestamptz",
            r["b"],
        )
        out[r["relname"]] = (lo, hi)
    return out


async def _landing_partition(conn: asyncpg.Connection, table: str, ts: datetime) -> str:
    """Where a row stamped ``ts`` would go (inserted, then rolled back)."""
    tr = conn.transaction()
    await tr.start()
    try:
        row_id = await _insert(conn, ts)
        key = TABLES[table]
        return str(
            await conn.fetchval(
                f"SELECT tableoid::regclass::text FROM {table} WHERE id = $1 AND {key} = $2",  # noqa: S608
                row_id,
                ts,
            )
        )
    finally:
        await tr.rollback()


async def _assert_partitions_ahead(conn: asyncpg.Connection, now: datetime) -> None:
    # Every 10 minutes up to the horizon lands in a range partition, never the default.
    horizon = now + AHEAD * H
    ts = now - H
    while ts < horizon:
        for table in TABLES:
            assert await _landing_partition(conn, table, ts) != f"{table}_default", (table, ts)
        ts += timedelta(minutes=10)


async def test_once_drops_expired_partitions_keeps_recent_rows_and_creates_ahead(db: Db) -> None:
    now = datetime.now(UTC)
    cutoff = now - RETENTION
    await _layout(db.conn, now - 10 * H, now + H)
    ages = {
        "9.5h": 9.5,
        "5h": 5,
        "3h05": 3 + 5 / 60,  # older than retention + one width: must go
        "2h30": 2.5,  # between retention and retention + width: goes with its partition
        "1h55": 1 + 55 / 60,  # younger than retention: must stay
        "30m": 0.5,
        "0": 0,
        "-30m": -0.5,
    }
    ids = {label: await _insert(db.conn, now - h * H) for label, h in ages.items()}
    before = {t: await _partitions(db.conn, t) for t in TABLES}
    for table in TABLES:
        parts = {part for part, _ in (await _rows(db.conn, table)).values()}
        assert f"{table}_default" not in parts

    report = await _janitor(db.settings, now=now)

    assert not report.skipped
    for table in TABLES:
        rows = await _rows(db.conn, table)
        for label, hours in ages.items():
            ts = now - hours * H
            if ts < now - RETENTION - H:
                assert ids[label] not in rows, (table, label)
            elif ts >= cutoff:
                assert ids[label] in rows, (table, label)
            else:
                # Its 1 h partition ends at the next full hour: dropped iff that is past.
                assert (ids[label] in rows) == (_hour(ts) + H > cutoff), (table, label)
        after = await _partitions(db.conn, table)
        expired = {name for name, (_, hi) in before[table].items() if hi <= cutoff}
        assert expired, "the layout should have had expired partitions"
        assert set(report.tables[table].dropped) == expired
        assert not any(hi <= cutoff for _, hi in after.values())
        assert set(report.tables[table].created) == set(after) - set(before[table])
        assert report.tables[table].default_moved == 0
        assert report.tables[table].deferred == []
    await _assert_partitions_ahead(db.conn, now)


async def test_a_second_pass_changes_nothing(db: Db) -> None:
    now = datetime.now(UTC)
    await _layout(db.conn, now - 6 * H, now)
    for hours in (5, 1, 0, -2):
        await _insert(db.conn, now - hours * H)
    first = await _janitor(db.settings, now=now)
    assert any(t.dropped or t.created for t in first.tables.values())
    state = {t: (await _rows(db.conn, t), await _partitions(db.conn, t)) for t in TABLES}

    second = await _janitor(db.settings, now=now)

    assert not second.skipped
    for table in TABLES:
        assert second.tables[table].created == []
        assert second.tables[table].dropped == []
        assert second.tables[table].default_moved == 0
        assert second.tables[table].default_deleted == 0
        assert (await _rows(db.conn, table), await _partitions(db.conn, table)) == state[table]


async def test_default_partition_rows_are_moved_or_pruned_without_loss(db: Db) -> None:
    now = datetime.now(UTC)
    await _layout(db.conn)  # no range partition at all: every row goes to default
    stale = [now - 5 * H, now - 3.5 * H, now - 2.2 * H]  # older than retention
    # Within retention or ahead; two rows share an hour, so one partition takes both.
    live = [now - 1.9 * H, now - 0.5 * H, now - 0.5 * H, now + 1.5 * H]
    far_future = now + 100 * H  # past the horizon: nowhere to move it yet
    stale_ids = [await _insert(db.conn, ts) for ts in stale]
    live_ids = [await _insert(db.conn, ts) for ts in live]
    future_id = await _insert(db.conn, far_future)
    before = {t: await _rows(db.conn, t) for t in TABLES}
    assert {part for part, _ in before["events"].values()} == {"events_default"}

    report = await _janitor(db.settings, now=now)

    for table in TABLES:
        rows = await _rows(db.conn, table)
        assert report.tables[table].default_deleted == len(stale)
        assert report.tables[table].default_moved == len(live)
        assert report.tables[table].default_rows_left == 1
        for row_id in stale_ids:
            assert row_id not in rows
        for row_id, ts in zip(live_ids, live, strict=True):
            part, content = rows[row_id]
            # Same content, now in the 1 h partition of its own hour.
            assert content == before[table][row_id][1]
            assert part == f"{table}_p{_hour(ts):%Y%m%d_%H%M%S}"
        assert rows[future_id] == before[table][future_id]
        # A partition built by the move has the parent's indexes like any other.
        moved_into = rows[live_ids[0]][0]
        indexes = await db.conn.fetchval(
            "SELECT count(*) FROM pg_index WHERE indrelid = $1::regclass", moved_into
        )
        parent_indexes = await db.conn.fetchval(
            "SELECT count(*) FROM pg_index WHERE indrelid = $1::regclass", table
        )
        assert indexes == parent_indexes > 0
    await _assert_partitions_ahead(db.conn, now)


async def test_a_janitor_skips_while_another_holds_the_lock(db: Db) -> None:
    now = datetime.now(UTC)
    await _layout(db.conn, now - 6 * H, now)
    layout = {t: await _partitions(db.conn, t) for t in TABLES}
    holder = await asyncpg.connect(asyncpg_dsn(db.settings))
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", ADVISORY_LOCK_KEY)
        skipped = await _janitor(db.settings, now=now)
        assert skipped.skipped
        assert skipped.tables == {}
        assert {t: await _partitions(db.conn, t) for t in TABLES} == layout
        await holder.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
    finally:
        await holder.close()

    ran = await _janitor(db.settings, now=now)
    assert not ran.skipped
    assert ran.tables["events"].dropped
    # The lock went back: the next janitor gets it too.
    assert not (await _janitor(db.settings, now=now)).skipped


async def test_two_concurrent_janitors_are_harmless(db: Db) -> None:
    # At :40 past the hour the layout below ends at the top of this hour, so the rows at
    # -0.5 h and +1 h have no partition whatever the wall clock says (at :10 the -0.5 h
    # row would fall inside the layout's last partition).
    now = _hour(datetime.now(UTC)) + timedelta(minutes=40)
    await _layout(db.conn, now - 8 * H, now - H)
    ids = [await _insert(db.conn, now - h * H) for h in (7, 1.5, 0.5, -1)]
    expired = {
        t: {n for n, (_, hi) in (await _partitions(db.conn, t)).items() if hi <= now - RETENTION}
        for t in TABLES
    }

    reports = await asyncio.gather(*(_janitor(db.settings, now=now) for _ in range(2)))

    assert any(not r.skipped for r in reports)
    for table in TABLES:
        dropped = [n for r in reports if not r.skipped for n in r.tables[table].dropped]
        created = [n for r in reports if not r.skipped for n in r.tables[table].created]
        moved = sum(r.tables[table].default_moved for r in reports if not r.skipped)
        assert sorted(dropped) == sorted(expired[table])  # each dropped exactly once
        assert len(created) == len(set(created))
        assert moved == 2  # the rows at -0.5 h and +1 h had no partition yet
        rows = await _rows(db.conn, table)
        assert set(rows) == set(ids[1:])
        assert all(part != f"{table}_default" for part, _ in rows.values())
    await _assert_partitions_ahead(db.conn, now)


async def test_two_janitor_processes_once_both_exit_zero(
    stack: IsolatedStack, db: Db, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    await _layout(db.conn, now - 8 * H, now - H)
    keep = await _insert(db.conn, now - H)
    gone = await _insert(db.conn, now - 7 * H)
    env = {
        "HOOKSTREAM_DATABASE_URL": db.settings.database_url,
        "HOOKSTREAM_RETENTION_HOURS": "2",
        "HOOKSTREAM_PARTITION_WIDTH": "1h",
        "HOOKSTREAM_PARTITIONS_AHEAD": str(AHEAD),
    }
    procs = [ServiceProcess(stack, "janitor", "--once", log_dir=tmp_path, **env) for _ in "ab"]
    codes = [await asyncio.to_thread(p.proc.wait, 60) for p in procs]
    logs = [p.log() for p in procs]
    for p in procs:
        p.stop()

    assert codes == [0, 0], logs
    events = [json.loads(line) for text in logs for line in text.splitlines() if line]
    runs = [e for e in events if e["event"] in ("janitor run", "janitor run skipped")]
    assert len(runs) == 2, logs
    assert any(not e["skipped"] for e in runs), logs
    assert not any(e["level"] in ("error", "critical") for e in events), logs
    for table in TABLES:
        rows = await _rows(db.conn, table)
        assert keep in rows
        assert gone not in rows
    await _assert_partitions_ahead(db.conn, datetime.now(UTC))


async def test_the_loop_waits_for_stop_not_for_the_interval(db: Db) -> None:
    settings = db.settings.model_copy(update={"janitor_interval": timedelta(hours=1)})
    stop = asyncio.Event()
    first = asyncio.Event()
    reports: list[JanitorReport] = []

    def on_report(report: JanitorReport) -> None:
        reports.append(report)
        first.set()

    task = asyncio.create_task(janitor_main(settings, stop, on_report=on_report))
    await asyncio.wait_for(first.wait(), 30)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert len(reports) == 1
    assert not reports[0].skipped


async def test_redis_key_counts_by_prefix(db: Db) -> None:
    from services.janitor.cache_keys import KEY_PREFIXES, count_keys

    redis = make_redis(db.settings)
    tag = secrets.token_hex(4)
    ours = {"idem": f"hstest:{tag}:idem:", "subs": f"hstest:{tag}:subs:"}
    keys = [f"{ours['idem']}{i}" for i in range(5)] + [f"{ours['subs']}{i}" for i in range(2)]
    defaults = [f"{KEY_PREFIXES['idempotency']}hstest-{tag}-{i}" for i in range(3)]
    try:
        for key in keys + defaults:
            await redis.set(key, b"1", ex=60)
        counts = await count_keys(redis, ours)
        assert counts is not None
        assert {n: (c.count, c.complete) for n, c in counts.items()} == {
            "idem": (5, True),
            "subs": (2, True),
        }
        # One SCAN step of one slot cannot cover a keyspace of 10 keys: a lower bound.
        partial = await count_keys(redis, ours, scan_count=1, max_calls=1)
        assert partial is not None
        assert not partial["idem"].complete

        report = await _janitor(db.settings)
        assert report.redis_keys is not None
        assert report.redis_keys["idempotency"].count >= 3
        assert "subscription_cache" in report.redis_keys
    finally:
        await redis.delete(*keys, *defaults)
        await redis.aclose()


async def test_redis_down_is_a_warning_and_retention_still_runs(db: Db) -> None:
    now = datetime.now(UTC)
    await _layout(db.conn, now - 6 * H, now)
    settings = db.settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with capture_logs() as logs:
        report = await _janitor(settings, now=now)
    assert report.redis_keys is None
    assert report.tables["delivery_attempts"].dropped
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["redis unavailable, key counts skipped"]
    await _assert_partitions_ahead(db.conn, now)


async def test_partitions_of_an_older_width_are_respected(db: Db) -> None:
    # The migration made 6 h partitions from a day ago to two days ahead; the janitor now
    # runs with 1 h. It must not try to create overlapping 1 h partitions (PostgreSQL
    # would refuse), and drops the 6 h ones by their real bounds.
    now = datetime.now(UTC)
    before = {t: await _partitions(db.conn, t) for t in TABLES}
    assert all(hi - lo == 6 * H for layout in before.values() for lo, hi in layout.values())

    report = await _janitor(db.settings, now=now)

    for table in TABLES:
        expired = {n for n, (_, hi) in before[table].items() if hi <= now - RETENTION}
        assert expired
        assert set(report.tables[table].dropped) == expired
        assert report.tables[table].created == []
        assert set(await _partitions(db.conn, table)) == set(before[table]) - expired
    await _assert_partitions_ahead(db.conn, now)


async def test_a_long_reader_defers_the_layout_change_instead_of_blocking(db: Db) -> None:
    now = datetime.now(UTC)
    await _layout(db.conn, now - 6 * H, now)
    reader = await asyncpg.connect(asyncpg_dsn(db.settings))
    try:
        tr = reader.transaction()
        await tr.start()
        # An open transaction that read the table holds ACCESS SHARE until it ends.
        await reader.fetch("SELECT 1 FROM delivery_attempts LIMIT 1")
        report = await _janitor(db.settings, now=now)
        await tr.rollback()
    finally:
        await reader.close()

    assert report.tables["delivery_attempts"].deferred == ["drop", "create"]
    assert report.tables["delivery_attempts"].dropped == []
    assert report.tables["events"].deferred == []
    assert report.tables["events"].dropped
    retry = await _janitor(db.settings, now=now)
    assert retry.tables["delivery_attempts"].dropped
    assert retry.tables["delivery_attempts"].created
    await _assert_partitions_ahead(db.conn, now)


async def test_short_lived_rows_are_pruned_and_live_ones_kept(db: Db) -> None:
    """The subscription change log after an hour; ended or expired sessions and used or
    expired portal links after a day; an ordered subscription's finished jobs after the
    attempt retention. Live sessions, fresh changes and waiting jobs stay."""
    now = datetime.now(UTC)
    app = await db.conn.fetchval("SELECT id FROM applications WHERE uid = 'default'")

    async def change(at: datetime) -> None:
        await db.conn.execute(
            "INSERT INTO subscription_changes (subscription_id, application_id, changed_at)"
            " VALUES ($1, $2, $3)",
            uuid.uuid4(),
            app,
            at,
        )

    async def session(expires: datetime, ended: datetime | None) -> None:
        await db.conn.execute(
            "INSERT INTO web_sessions (id, token_hash, kind, csrf, expires_at, ended_at)"
            " VALUES ($1, $2, 'ui', 'c', $3, $4)",
            uuid.uuid4(),
            secrets.token_bytes(32),
            expires,
            ended,
        )

    async def link(expires: datetime, used: datetime | None) -> None:
        await db.conn.execute(
            "INSERT INTO portal_links (id, application_id, token_hash, expires_at, used_at)"
            " VALUES ($1, $2, $3, $4, $5)",
            uuid.uuid4(),
            app,
            secrets.token_bytes(32),
            expires,
            used,
        )

    await change(now - timedelta(hours=2))
    await change(now - timedelta(minutes=5))
    await session(now + timedelta(hours=1), None)  # live
    await session(now + timedelta(hours=1), now - timedelta(days=2))  # logged out long ago
    await session(now - timedelta(days=2), None)  # expired long ago
    await session(now - timedelta(hours=1), None)  # expired lately: kept a while
    await link(now + timedelta(hours=1), None)  # unused, live
    await link(now + timedelta(hours=1), now - timedelta(days=2))  # used long ago
    await link(now - timedelta(days=3), None)  # expired long ago

    async def ordered_job(seq: int, done: datetime | None) -> None:
        await db.conn.execute(
            "INSERT INTO ordered_jobs (subscription_id, seq, delivery_id, headers, body,"
            " done_at) VALUES ($1, $2, $3, '[]', '{}', $4)",
            app,
            seq,
            uuid.uuid4(),
            done,
        )

    retention = timedelta(hours=db.settings.retention_hours)
    await ordered_job(1, now - retention - timedelta(hours=1))  # finished long ago
    await ordered_job(2, now - timedelta(minutes=5))  # finished lately: kept
    await ordered_job(3, None)  # still waiting, however old

    report = await _janitor(db.settings)
    assert report.pruned == {
        "subscription_changes": 1,
        "web_sessions": 2,
        "portal_links": 2,
        "ordered_jobs": 1,
    }
    assert await db.conn.fetchval("SELECT array_agg(seq ORDER BY seq) FROM ordered_jobs") == [2, 3]
    assert await db.conn.fetchval("SELECT count(*) FROM subscription_changes") == 1
    assert await db.conn.fetchval("SELECT count(*) FROM web_sessions") == 2
    assert await db.conn.fetchval("SELECT count(*) FROM portal_links") == 1
