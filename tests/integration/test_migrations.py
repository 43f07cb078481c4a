"""Migrations on a database with history: 0001 → head moves what exists into the default
application, and head → 0001 → head round-trips."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from shared import secretbox
from shared.models import DEFAULT_APPLICATION_ID
from tests.support.stack import ROOT, IsolatedStack, admin_dsn


def alembic(stack: IsolatedStack, *args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"url={stack.database_url}", *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env=env,
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


async def test_secrets_stored_in_plaintext_are_encrypted_by_the_migration(
    empty: IsolatedStack,
) -> None:
    alembic(empty, "upgrade", "0006")
    dsn = empty.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    one, two = uuid.uuid4(), uuid.uuid4()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO subscriptions (id, target_url, secret_key, previous_secret_key) VALUES "
            "($1, 'https://e.example/', 'whsec_one', 'whsec_old'), "
            "($2, 'https://e.example/', 'whsec_two', NULL)",
            one,
            two,
        )
    finally:
        await conn.close()
    bare = {k: v for k, v in os.environ.items() if not k.startswith("HOOKSTREAM_")}
    # Plaintext secrets and no key: the migration stops and says why, changing nothing.
    with pytest.raises(subprocess.CalledProcessError) as refused:
        alembic(empty, "upgrade", "head", env=bare)
    assert "2 subscriptions have secrets to encrypt" in refused.value.stderr.decode()
    key = secretbox.generate_key()
    alembic(empty, "upgrade", "head", env={**bare, "HOOKSTREAM_ENCRYPTION_KEYS": key})
    keyring = secretbox.Keyring(secretbox.parse_keys(key))
    conn = await asyncpg.connect(dsn)
    try:
        rows = {
            r["id"]: (r["secret_key"], r["previous_secret_key"])
            for r in await conn.fetch(
                "SELECT id, secret_key, previous_secret_key FROM subscriptions"
            )
        }
    finally:
        await conn.close()
    assert all(keyring.is_current(v) for pair in rows.values() for v in pair if v is not None)
    assert keyring.open(rows[one][0]) == "whsec_one"
    assert keyring.open(rows[one][1]) == "whsec_old"
    assert keyring.open(rows[two][0]) == "whsec_two"
    assert rows[two][1] is None
    # Down again, with the key: plaintext as before.
    alembic(empty, "downgrade", "0006", env={**bare, "HOOKSTREAM_ENCRYPTION_KEYS": key})
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT secret_key FROM subscriptions WHERE id = $1", two) == (
            "whsec_two"
        )
    finally:
        await conn.close()
