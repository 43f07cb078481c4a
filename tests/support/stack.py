"""Per-session isolation on the shared local stack.

Each pytest session gets its own PostgreSQL database (built by Alembic) and its own topic
prefix, so concurrent sessions (a developer's and a helper's) never see each other's data.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from pathlib import Path

import asyncpg
from aiokafka.errors import KafkaError

from shared.kafka import admin_client
from shared.secretbox import generate_key
from shared.settings import Settings
from shared.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[2]
# The local dev broker's directory (deploy/local/stack.sh): its jars, pid file and GC log.
DEV_KAFKA_DIR = ROOT / ".local" / "kafka"
DEV_PG_DIR = ROOT / ".local" / "pg"
# How long ``down`` may spend deleting a namespace's topics (a test may have left the
# broker slow or gone; the database is dropped either way).
DROP_TOPICS_TIMEOUT = 20.0


def dev_broker_pid() -> int:
    """The pid of the one-node dev broker that ``make stack-up`` started."""
    return int((DEV_KAFKA_DIR / "kafka.pid").read_text().split()[0])


def postmaster_pid() -> int:
    """The pid of the dev PostgreSQL's postmaster (the first line of its pid file)."""
    return int((DEV_PG_DIR / "data" / "postmaster.pid").read_text().split()[0])


def base_settings() -> Settings:
    return Settings()


def admin_dsn(database_url: str, database: str = "postgres") -> str:
    url = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    return url.rsplit("/", 1)[0] + "/" + database


async def _create_database(database_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn(database_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_topics(bootstrap: str, prefix: str) -> None:
    """Delete the topics under ``prefix``: its own (``<prefix>.events``…) and those of
    prefixes derived from it (``<prefix>-rs…``, a test's own)."""
    async with admin_client(bootstrap) as admin:
        ours = [
            name
            for name in await admin.list_topics()
            if name.startswith((f"{prefix}.", f"{prefix}-"))
        ]
        if ours:
            await admin.delete_topics(ours)


async def _drop_database(database_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn(database_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def migrate(database_url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"url={database_url}", "upgrade", "head"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )


# One key for every stack of a test process: the keyring is per process (installed when
# an engine is built), and tests build engines for several stacks.
ENCRYPTION_KEY = generate_key()


class IsolatedStack:
    """A fresh database and topic namespace on the running local stack."""

    def __init__(self) -> None:
        base = base_settings()
        tag = secrets.token_hex(4)
        self.db_name = f"hstest_{tag}"
        self.database_url = admin_dsn(base.database_url, self.db_name).replace(
            "postgresql://", "postgresql+asyncpg://", 1
        )
        self.env = {
            "HOOKSTREAM_DATABASE_URL": self.database_url,
            "HOOKSTREAM_REDIS_URL": base.redis_url,
            "HOOKSTREAM_KAFKA_BOOTSTRAP": base.kafka_bootstrap,
            "HOOKSTREAM_TOPIC_PREFIX": f"hstest-{tag}",
            "HOOKSTREAM_API_KEY": f"test-key-{secrets.token_hex(8)}",
            "HOOKSTREAM_ENCRYPTION_KEYS": ENCRYPTION_KEY,
            "HOOKSTREAM_ALLOW_PRIVATE_TARGETS": "true",
            "HOOKSTREAM_RETRY_SCHEDULE": "1s,2s,3s",
            "HOOKSTREAM_EVENTS_PARTITIONS": "4",
            "HOOKSTREAM_DELIVERIES_PARTITIONS": "4",
            "HOOKSTREAM_RETRY_PARTITIONS": "2",
            "HOOKSTREAM_LOG_LEVEL": "INFO",
        }
        self._base_url = base.database_url

    def settings(self, **overrides: object) -> Settings:
        """Settings for this stack, as a service would build them from its environment."""
        env: dict[str, object] = {
            k.removeprefix("HOOKSTREAM_").lower(): v for k, v in self.env.items()
        }
        env.update(overrides)
        return Settings(**env)  # type: ignore[arg-type]

    def process_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env.update(extra)
        # offline/sitecustomize.py: no DNS query for test data's target names.
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "tests" / "support" / "offline"), str(ROOT)]
        )
        return env

    def up(self) -> None:
        asyncio.run(_create_database(self._base_url, self.db_name))
        migrate(self.database_url)
        asyncio.run(ensure_topics(self.settings()))

    def down(self) -> None:
        """Drop the database and delete the topics. Until 2026-12-07 the topics stayed: the
        dev broker kept every run's records (5.6 GB after an hour of ``bench targets``
        runs, 195 partitions), on a disk that ``make bench`` and ``make test`` share."""
        settings = self.settings()
        try:
            asyncio.run(
                asyncio.wait_for(
                    drop_topics(settings.kafka_bootstrap, settings.topic_prefix),
                    DROP_TOPICS_TIMEOUT,
                )
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            # Best effort: what is left costs disk, not correctness (the prefix is unique).
            print(
                f"topics under {settings.topic_prefix} not deleted: {type(exc).__name__}: {exc}",
                file=sys.stderr,
            )
        asyncio.run(_drop_database(self._base_url, self.db_name))
