"""Management writes racing each other on one subscription answer 404, never 500.

Found by schemathesis's stateful phase (two workers): a PATCH read the row, a DELETE
committed, and the PATCH's UPDATE then matched no row. Each race is replayed here in a
fixed order on the real database: one transaction holds the row, the other starts, the
first commits.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.ingest.errors import NotFound
from services.ingest.schemas import SubscriptionCreate, SubscriptionUpdate
from services.ingest.subscriptions import (
    create_subscription,
    delete_subscription,
    get_subscription,
    update_subscription,
)
from shared.db import make_sessionmaker

URL_LIMIT = 2048


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


async def _new(sessions: async_sessionmaker[AsyncSession]) -> uuid.UUID:
    async with sessions.begin() as session:
        sub = await create_subscription(
            session,
            SubscriptionCreate(target_url="http://127.0.0.1:9/hook"),
            max_url_length=URL_LIMIT,
        )
    return sub.id


async def _patch(
    sessions: async_sessionmaker[AsyncSession], sub_id: uuid.UUID, body: dict[str, Any]
) -> None:
    async with sessions.begin() as session:
        await update_subscription(
            session, sub_id, SubscriptionUpdate(**body), max_url_length=URL_LIMIT
        )


_WAITING_ON_A_LOCK = text(
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


async def _started(sessions: async_sessionmaker[AsyncSession], task: asyncio.Task[None]) -> None:
    """Until the task is blocked on the row lock (seen by PostgreSQL), or has finished.

    Each poll is its own transaction: PostgreSQL reads pg_stat_activity once per
    transaction and answers from that snapshot until it ends, so a probe that looked
    before the task blocked would never see it block (CI waited out the 10 s that way).
    """
    async with asyncio.timeout(10):
        while not task.done():
            async with sessions() as probe:
                if await probe.scalar(_WAITING_ON_A_LOCK):
                    return
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("body", [{}, {"is_active": False}, {"event_types": ["a"]}])
async def test_patch_racing_a_delete_is_404(
    sessions: async_sessionmaker[AsyncSession], body: dict[str, Any]
) -> None:
    sub_id = await _new(sessions)
    async with sessions.begin() as deleting:
        await delete_subscription(deleting, sub_id)
        patching = asyncio.create_task(_patch(sessions, sub_id, body))
        await _started(sessions, patching)
    with pytest.raises(NotFound):
        await patching


async def test_delete_racing_a_delete_is_404(sessions: async_sessionmaker[AsyncSession]) -> None:
    sub_id = await _new(sessions)
    async with sessions.begin() as first:
        await delete_subscription(first, sub_id)

        async def second() -> None:
            async with sessions.begin() as session:
                await delete_subscription(session, sub_id)

        racing = asyncio.create_task(second())
        await _started(sessions, racing)
    with pytest.raises(NotFound):
        await racing


async def test_patches_racing_each_other_both_apply(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    sub_id = await _new(sessions)
    async with sessions.begin() as first:
        await update_subscription(
            first, sub_id, SubscriptionUpdate(event_types=["x"]), max_url_length=URL_LIMIT
        )
        racing = asyncio.create_task(_patch(sessions, sub_id, {"is_active": False}))
        await _started(sessions, racing)
    await racing
    async with sessions() as session:
        sub = await get_subscription(session, sub_id)
    assert sub.event_types == ["x"]
    assert sub.is_active is False
