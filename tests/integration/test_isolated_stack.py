"""A namespace on the local stack leaves nothing behind: its database and its topics go."""

from __future__ import annotations

import asyncio

import asyncpg

from shared.kafka import admin_client
from shared.topics import ensure_topics
from tests.support.stack import IsolatedStack, admin_dsn


async def _topics(bootstrap: str) -> set[str]:
    async with admin_client(bootstrap) as admin:
        return set(await admin.list_topics())


async def _databases(stack: IsolatedStack) -> set[str]:
    conn = await asyncpg.connect(admin_dsn(stack.database_url))
    try:
        return {row["datname"] for row in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()


def test_down_deletes_its_topics_and_database_and_no_one_elses(stack: IsolatedStack) -> None:
    ns = IsolatedStack()
    ns.up()
    prefix = ns.settings().topic_prefix
    # A prefix derived from the namespace's, as tests make for topics of their own.
    asyncio.run(ensure_topics(ns.settings(topic_prefix=f"{prefix}-own")))
    bootstrap = ns.settings().kafka_bootstrap
    before = asyncio.run(_topics(bootstrap))
    ours = {name for name in before if name.startswith((f"{prefix}.", f"{prefix}-"))}
    assert f"{prefix}.deliveries" in ours
    assert f"{prefix}-own.deliveries" in ours

    ns.down()

    after = asyncio.run(_topics(bootstrap))
    assert not ours & after
    # The session's namespace (another prefix) keeps its topics.
    assert f"{stack.settings().topic_prefix}.deliveries" in after
    assert ns.db_name not in asyncio.run(_databases(stack))
