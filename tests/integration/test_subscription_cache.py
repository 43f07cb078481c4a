"""The subscription cache on the real database: lazy loads, the change log, its watermark,
and the bounds on what a process holds."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.db import make_sessionmaker
from shared.redis import make_redis
from shared.settings import Settings
from shared.subscriptions import SubscriptionCache, notify_changed

POLL = 0.3


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


async def add_app(engine: AsyncEngine) -> uuid.UUID:
    app = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO applications (id, name) VALUES (:id, 'cache test')"), {"id": app}
        )
    return app


async def add_sub(engine: AsyncEngine, app: uuid.UUID, types: list[str]) -> uuid.UUID:
    sid = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO subscriptions (id, application_id, target_url, event_types)"
                " VALUES (:id, :app, 'https://e.example/', :types)"
            ),
            {"id": sid, "app": app, "types": types},
        )
    return sid


async def set_types(engine: AsyncEngine, sid: uuid.UUID, types: list[str]) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE subscriptions SET event_types = :t WHERE id = :id"),
            {"t": types, "id": sid},
        )


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> float:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, f"not seen within {within} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
async def cache(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[SubscriptionCache]:
    """No Redis: every change must come through the periodic poll of the change log, as
    when a pub/sub message is lost."""
    cache = SubscriptionCache(sessions, None, "unit", POLL)
    await cache.start()
    yield cache
    await cache.stop()


async def test_a_lost_message_is_healed_by_the_poll(
    cache: SubscriptionCache, engine: AsyncEngine
) -> None:
    app = await add_app(engine)
    sid = await add_sub(engine, app, ["a"])
    assert [v.id for v in await cache.matching(app, "a")] == [sid]
    assert await cache.get(sid) is not None

    await set_types(engine, sid, ["b"])  # nobody announces it

    async def moved() -> bool:
        return [v.id for v in await cache.matching(app, "b")] == [sid] and not (
            await cache.matching(app, "a")
        )

    await eventually(moved, within=POLL + 1)
    view = await cache.get(sid)
    assert view is not None
    assert view.event_types == frozenset({"b"})

    added = await add_sub(engine, app, [])
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM subscriptions WHERE id = :id"), {"id": sid})

    async def both() -> bool:
        return [v.id for v in await cache.matching(app, "b")] == [added]

    await eventually(both, within=POLL + 1)
    assert await cache.get(sid) is None


async def test_a_change_committed_late_by_a_long_transaction_is_not_skipped(
    cache: SubscriptionCache, engine: AsyncEngine
) -> None:
    """The watermark is the oldest running transaction, not the newest change seen: a
    transaction that began before a poll and commits after it is still read."""
    app = await add_app(engine)
    slow_sub = await add_sub(engine, app, ["a"])
    quick_sub = await add_sub(engine, app, ["a"])
    assert len(await cache.matching(app, "a")) == 2
    async with engine.connect() as slow:
        tx = await slow.begin()
        await slow.execute(
            text("UPDATE subscriptions SET is_active = false WHERE id = :id"), {"id": slow_sub}
        )
        await set_types(engine, quick_sub, ["b"])  # a newer transaction commits first

        async def quick_seen() -> bool:
            return [v.id for v in await cache.matching(app, "a")] == [slow_sub]

        await eventually(quick_seen, within=POLL + 1)
        await cache.refresh()
        await tx.commit()

    async def slow_seen() -> bool:
        return await cache.matching(app, "a") == []

    await eventually(slow_seen, within=POLL + 1)


async def test_a_transaction_left_open_does_not_make_every_poll_reread_old_changes(
    cache: SubscriptionCache, engine: AsyncEngine
) -> None:
    """An open transaction holds the watermark back, so each poll returns the same change
    rows again; a row already applied must not be read from subscriptions again (that
    made each poll, and each change's answer, take seconds after a thousand changes)."""
    app = await add_app(engine)
    subs = [await add_sub(engine, app, ["a"]) for _ in range(5)]
    assert len(await cache.matching(app, "a")) == 5
    reads: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM subscriptions" in statement:
            reads.append(statement)

    async with engine.connect() as idle:
        tx = await idle.begin()
        await idle.execute(text("SELECT pg_current_xact_id()"))  # holds the watermark
        sa_event.listen(engine.sync_engine, "before_cursor_execute", count)
        try:
            for sid in subs:
                await set_types(engine, sid, ["b"])
                await cache.refresh()
            assert len(reads) == 5, "each change read once"
            for _ in range(3):
                await cache.refresh()
            assert len(reads) == 5, "polls with nothing new read nothing"
            assert await cache.matching(app, "b") != []
        finally:
            sa_event.remove(engine.sync_engine, "before_cursor_execute", count)
            await tx.rollback()


async def test_what_a_process_holds_is_bounded(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    cache = SubscriptionCache(sessions, None, "unit", POLL, max_ids=5, max_app_views=6)
    await cache.start()
    try:
        apps = [await add_app(engine) for _ in range(4)]
        subs = {app: [await add_sub(engine, app, ["a"]) for _ in range(3)] for app in apps}
        for app in apps:
            assert {v.id for v in await cache.matching(app, "a")} == set(subs[app])
        for ids in subs.values():
            for sid in ids:
                assert await cache.get(sid) is not None
        assert len(cache) <= 5 + 6
        # Evicted applications load again, whole and correct.
        assert {v.id for v in await cache.matching(apps[0], "a")} == set(subs[apps[0]])
    finally:
        await cache.stop()


async def test_a_change_through_redis_is_seen_well_within_a_second(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, settings: Settings
) -> None:
    """With the push, a slow poll does not matter: the announcement triggers one."""
    redis = make_redis(settings)
    cache = SubscriptionCache(sessions, redis, settings.topic_prefix, 60)
    await cache.start()
    try:
        app = await add_app(engine)
        sid = await add_sub(engine, app, ["a"])
        assert len(await cache.matching(app, "a")) == 1
        await asyncio.wait_for(cache.listening.wait(), 10)
        await set_types(engine, sid, ["b"])
        await notify_changed(redis, settings.topic_prefix, sid)

        async def seen() -> bool:
            return await cache.matching(app, "a") == []

        assert await eventually(seen, within=1.0) < 1.0
    finally:
        await cache.stop()
        await redis.aclose()


async def test_many_jobs_asking_for_one_cold_subscription_cost_one_query(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    opened = 0

    def counting(**kw: Any) -> AsyncSession:
        nonlocal opened
        opened += 1
        return sessions(**kw)

    cache = SubscriptionCache(counting, None, "unit", 60)  # type: ignore[arg-type]
    await cache.start()
    try:
        app = await add_app(engine)
        sid = await add_sub(engine, app, ["a"])
        before = opened
        views = await asyncio.gather(*(cache.get(sid) for _ in range(200)))
        assert {v.id for v in views if v is not None} == {sid}
        assert opened - before == 1
        unknown = uuid.uuid4()
        assert set(await asyncio.gather(*(cache.get(unknown) for _ in range(50)))) == {None}
        assert opened - before == 2
    finally:
        await cache.stop()


async def test_a_bulk_change_past_the_overflow_drops_the_cache_and_nothing_stale_is_served(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    """A poll that finds more changes than it reads one by one (a bulk import) drops what
    the process holds instead of reading them all; the next reads see the new rows."""
    cache = SubscriptionCache(sessions, None, "unit", 60, overflow=10)
    await cache.start()
    try:
        app = await add_app(engine)
        held = await add_sub(engine, app, ["a"])
        assert [v.id for v in await cache.matching(app, "a")] == [held]
        assert (await cache.get(held)) is not None
        # One transaction: the held subscription changes, 20 more arrive in its app.
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE subscriptions SET target_url = 'https://moved.example/' "
                     "WHERE id = :id"),
                {"id": held},
            )  # fmt: skip
            await conn.execute(
                text(
                    "INSERT INTO subscriptions (id, application_id, target_url, event_types) "
                    "SELECT gen_random_uuid(), :app, 'https://e.example/', '{a}' "
                    "FROM generate_series(1, 20)"
                ),
                {"app": app},
            )
        reads: list[str] = []

        def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            reads.append(statement)

        sa_event.listen(engine.sync_engine, "before_cursor_execute", count)
        try:
            await cache.refresh()
        finally:
            sa_event.remove(engine.sync_engine, "before_cursor_execute", count)
        assert len(cache) == 0  # dropped, not applied row by row
        assert not any("FROM subscriptions" in r for r in reads)
        view = await cache.get(held)
        assert view is not None
        assert view.target_url == "https://moved.example/"
        assert len(await cache.matching(app, "a")) == 21
        # The watermark moved on: the next poll is an ordinary one and drops nothing.
        await cache.refresh()
        assert len(cache) > 0
    finally:
        await cache.stop()
