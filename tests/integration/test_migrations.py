"""Migrations on a database with history: 0001 → head moves what exists into the default
application, and head → 0001 → head round-trips."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from shared.models import DEFAULT_APPLICATION_ID
from tests.support.stack import ROOT, IsolatedStack, admin_dsn


def alembic(stack: IsolatedStack, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"url={stack.database_url}", *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def empty() -> Iterator[IsolatedStack]:
    """A database of its own, not migrated yet."""
    stack = IsolatedStack()
    conn_url = admin_dsn(stack.database_url.replace("+asyncpg", ""))

    async def create() -> None:
        conn = await asyncpg.connect(conn_url)
        try:
            await conn.execute(f'CREATE DATABASE "{stack.db_name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    yield stack
    stack.down()


async def test_existing_rows_move_into_the_default_application(empty: IsolatedStack) -> None:
    alembic(empty, "upgrade", "0001")
    dsn = empty.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    sub, event, attempt = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO subscriptions (id, target_url) VALUES ($1, 'https://e.example/')", sub
        )
        await conn.execute(
            "INSERT INTO events (id, received_at, event_type, content_type, body)"
            " VALUES ($1, now(), 't', 'application/json', '{}')",
            event,
        )
        await conn.execute(
            "INSERT INTO delivery_attempts (id, created_at, delivery_id, event_id,"
            " subscription_id, target_url, event_type, attempt_number, status)"
            " VALUES ($1, now(), $1, $2, $3, 'https://e.example/', 't', 1, 'SUCCESS')",
            attempt,
            event,
            sub,
        )
    finally:
        await conn.close()

    alembic(empty, "upgrade", "head")
    conn = await asyncpg.connect(dsn)
    try:
        default = await conn.fetchrow("SELECT id, uid FROM applications")
        assert default["id"] == DEFAULT_APPLICATION_ID
        assert default["uid"] == "default"
        for table in ("subscriptions", "events", "delivery_attempts"):
            owners = await conn.fetch(f"SELECT DISTINCT application_id FROM {table}")  # noqa: S608
            assert [r[0] for r in owners] == [DEFAULT_APPLICATION_ID], table
    finally:
        await conn.close()

    alembic(empty, "downgrade", "0001")
    alembic(empty, "upgrade", "head")
