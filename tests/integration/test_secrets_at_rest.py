"""Subscription secrets at rest, on the real database: a dump shows none of them, the
services still sign and verify with them, and a key rotation rewrites every row while
reads keep working."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text

from shared import secretbox
from shared.db import make_engine, make_sessionmaker
from shared.models import Subscription
from tests.support.signing import hub_headers
from tests.support.stack import ROOT, IsolatedStack


def pg_dump() -> str:
    found = shutil.which("pg_dump") or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"))), None
    )
    if found is None:
        pytest.fail("pg_dump not found (PostgreSQL client binaries)")
    return found


def dump(stack: IsolatedStack) -> str:
    dsn = stack.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    done = subprocess.run(
        [pg_dump(), "--data-only", "--dbname", dsn], capture_output=True, check=True, timeout=60
    )
    return done.stdout.decode()


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


async def test_a_dump_of_the_database_holds_no_plaintext_secret(
    operator: httpx.AsyncClient, module_stack: IsolatedStack
) -> None:
    first, second = new_secret(), new_secret()
    r = await operator.post(
        "/subscriptions/",
        json={"target_url": "https://e.example/hook", "secret_key": first, "event_types": []},
    )
    assert r.status_code == 201, r.text
    sub_id = r.json()["id"]
    r = await operator.post(f"/subscriptions/{sub_id}/secret/rotate", json={"secret_key": second})
    assert r.status_code == 200, r.text
    generated = (await operator.post(f"/subscriptions/{sub_id}/secret/rotate", json={})).json()
    third = generated["secret_key"]

    text_dump = dump(module_stack)
    assert f"{sub_id}" in text_dump  # the row is in the dump...
    for secret in (first, second, third):
        assert secret not in text_dump  # ...its secrets are not, in any form
        assert secret.removeprefix("whsec_") not in text_dump
    assert "hs1:" in text_dump

    # The service still verifies with them: a body signed with the current secret and
    # one signed with the previous one (inside its overlap) are both accepted.
    body = b'{"type": "order.paid"}'
    for secret in (third, second):
        r = await operator.post(
            f"/ingest/{sub_id}", content=body, headers=hub_headers(secret, body)
        )
        assert r.status_code == 202, r.text
    # Two rotations ago: no longer accepted.
    r = await operator.post(f"/ingest/{sub_id}", content=body, headers=hub_headers(first, body))
    assert r.status_code == 401


@pytest.fixture
def own_stack() -> Iterator[IsolatedStack]:
    """A database no service process reads: the rotation changes keys under it."""
    stack = IsolatedStack()
    stack.up()
    yield stack
    stack.down()


async def test_a_key_rotation_rewrites_every_row_while_reads_keep_working(
    own_stack: IsolatedStack,
) -> None:
    old_key, new_key = own_stack.env["HOOKSTREAM_ENCRYPTION_KEYS"], secretbox.generate_key()
    old_id = secretbox.key_id(secretbox.parse_keys(old_key)[0])
    new_id = secretbox.key_id(secretbox.parse_keys(new_key)[0])
    engine = make_engine(own_stack.settings(), pool_size=2)  # installs the old key
    sessions = make_sessionmaker(engine)
    expected: dict[uuid.UUID, tuple[str, str | None]] = {}
    try:
        async with sessions.begin() as db:
            for n in range(60):
                sid, secret = uuid.uuid4(), new_secret()
                previous = new_secret() if n % 3 == 0 else None
                expected[sid] = (secret, previous)
                db.add(
                    Subscription(
                        id=sid,
                        target_url="https://e.example/",
                        secret_key=secret,
                        previous_secret_key=previous,
                    )
                )
        async with engine.connect() as conn:
            stored = (await conn.execute(text("SELECT secret_key FROM subscriptions"))).scalars()
            assert all(v.startswith(f"hs1:{old_id}:") for v in stored)

        # Step 1 of a rotation: the new key first, the old one kept.
        rotating = own_stack.settings(encryption_keys=f"{new_key},{old_key}")
        secretbox.install(rotating)
        reads = 0
        done = asyncio.Event()

        async def read_all_the_time() -> None:
            nonlocal reads
            while not done.is_set():
                async with sessions() as db:
                    rows = (await db.execute(select(Subscription))).scalars().all()
                got = {r.id: (r.secret_key, r.previous_secret_key) for r in rows}
                assert got == expected
                reads += 1
                await asyncio.sleep(0)

        reader = asyncio.create_task(read_all_the_time())
        try:
            # Step 2: re-encrypt, in small batches so reads interleave with many of them.
            counts = await secretbox.reencrypt(rotating, batch=7)
        finally:
            done.set()
            await reader  # raises if any read saw a wrong or unreadable secret
        assert reads >= 2
        assert counts == {"rows": 60, "rewritten": 60, "changed_meanwhile": 0}
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT secret_key, previous_secret_key FROM subscriptions")
                )
            ).all()
        values = [v for row in rows for v in row if v is not None]
        assert len(values) == 80
        assert all(v.startswith(f"hs1:{new_id}:") for v in values)

        # Step 3: the old key goes; every secret still reads, and nothing is left to do.
        only_new = own_stack.settings(encryption_keys=new_key)
        secretbox.install(only_new)
        async with sessions() as db:
            subs = (await db.execute(select(Subscription))).scalars().all()
        assert {s.id: (s.secret_key, s.previous_secret_key) for s in subs} == expected
        assert (await secretbox.reencrypt(only_new))["rewritten"] == 0
        # The operator's command, as docs/operations.md gives it.
        command = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shared.secretbox",
            "reencrypt",
            cwd=ROOT,
            env=own_stack.process_env(HOOKSTREAM_ENCRYPTION_KEYS=new_key),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(command.communicate(), 60)
        assert command.returncode == 0, err.decode()
        assert "60 subscriptions with a secret, 0 rewritten" in out.decode()
    finally:
        await engine.dispose()
        secretbox.install(own_stack.settings())  # the suite's key again, for what follows


def start(
    stack: IsolatedStack, module: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=stack.process_env(**{"HOOKSTREAM_ALLOW_PLAINTEXT_SECRETS": "false", **env}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "service",
    ["services.ingest", "services.dispatcher", "services.retry_scheduler", "services.janitor"],
)
def test_every_service_refuses_to_start_without_a_key(stack: IsolatedStack, service: str) -> None:
    result = start(stack, service, HOOKSTREAM_ENCRYPTION_KEYS="")
    assert result.returncode == 2, result.stderr
    assert "HOOKSTREAM_ENCRYPTION_KEYS is not set" in result.stderr
    assert "python -m shared.secretbox generate-key" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_key_is_refused_by_position_never_echoed(stack: IsolatedStack) -> None:
    good, bad = secretbox.generate_key(), base64.b64encode(b"not thirty-two bytes").decode()
    result = start(stack, "services.ingest", HOOKSTREAM_ENCRYPTION_KEYS=f"{good},{bad}")
    assert result.returncode == 2, result.stderr
    assert "HOOKSTREAM_ENCRYPTION_KEYS: key 2 is not the base64 of 32 bytes" in result.stderr
    for output in (result.stdout, result.stderr):
        assert good not in output
        assert bad not in output


def test_plaintext_when_allowed_is_said_once_at_start_up(stack: IsolatedStack) -> None:
    result = start(
        stack,
        "services.janitor",
        "--once",
        HOOKSTREAM_ENCRYPTION_KEYS="",
        HOOKSTREAM_ALLOW_PLAINTEXT_SECRETS="true",
    )
    assert result.returncode == 0, result.stderr
    logged = result.stdout + result.stderr
    assert logged.count("subscription secrets are stored in plaintext") == 1, logged
