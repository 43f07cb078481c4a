"""Scoped API keys: minted once, stored as a hash, checked through a short-lived cache.

A key is ``hsk_`` + 43 URL-safe characters (32 random bytes). PostgreSQL keeps its
SHA-256 and its first characters (``prefix``, to recognise it in a list); the key itself
is shown once, in the create answer, and never logged.

Checking a key must cost about what the operator key costs (the bench holds it to 95 %),
so each process remembers what PostgreSQL said about a hash. An answer older than
``CHECK_SECONDS`` is re-checked in the background while requests keep using it, one check
per key at a time (measured under load before this: every request arriving while the
answer was stale ran its own query, ~39 a second, and the scoped key made 79 % of the
operator key's rate); an answer older than ``MAX_AGE`` is not used, requests wait for
the check. So a key revoked or expired in any process, or whose application was deleted,
is refused by every process within ``MAX_AGE`` (0.9 s, inside the 1 s the contract
allows), with no message bus to lose. When PostgreSQL cannot answer, the last answer
stands (a revocation cannot be committed then either).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.logging import get_logger
from shared.models import ApiKey, Application
from shared.singleflight import SingleFlight

log = get_logger("ingest.keys")

KEY_PREFIX = "hsk_"
_RANDOM_BYTES = 32
# token_urlsafe(32) is 43 characters; anything else is not one of ours.
KEY_LENGTH = len(KEY_PREFIX) + 43
# Shown in lists: enough to tell keys apart, far too little to guess the rest.
SHOWN_PREFIX = len(KEY_PREFIX) + 8
CHECK_SECONDS = 0.5
MAX_AGE = 0.9
# last_used_at is a hint for humans ("is this key still used?"), not an audit log: one
# write per key per minute per process at most.
LAST_USED_EVERY = timedelta(minutes=1)
# Unknown hashes remembered (to spare PostgreSQL a client retrying a bad key); bounded so
# a flood of random keys cannot grow memory.
MAX_REMEMBERED = 10_000


def mint_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True, slots=True)
class ValidKey:
    id: uuid.UUID
    application_id: uuid.UUID
    expires_at: datetime | None
    last_used_at: datetime | None

    def usable(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


class KeyStore:
    """``authenticate(key)`` → the key's application, or None."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        # hash → (checked at, monotonic; what PostgreSQL said: a usable key or None)
        self._checked: dict[bytes, tuple[float, ValidKey | None]] = {}
        self._checking: SingleFlight[bytes, ValidKey | None] = SingleFlight()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._touched: dict[uuid.UUID, datetime] = {}

    async def authenticate(self, key: str) -> ValidKey | None:
        if len(key) != KEY_LENGTH or not key.startswith(KEY_PREFIX):
            return None
        digest = key_hash(key)
        entry = self._checked.get(digest)
        age = time.monotonic() - entry[0] if entry is not None else float("inf")
        if entry is not None and age <= MAX_AGE:
            found = entry[1]
            if age > CHECK_SECONDS:
                self._check_soon(digest)
        else:
            found = await self._check(digest, entry)
        now = datetime.now(UTC)
        if found is None or not found.usable(now):
            return None
        self._touch(found, now)
        return found

    def _check_soon(self, digest: bytes) -> None:
        if digest not in self._checking:
            self._background(self._check(digest, self._checked.get(digest)))

    async def _check(
        self, digest: bytes, entry: tuple[float, ValidKey | None] | None
    ) -> ValidKey | None:
        """What PostgreSQL says now, one query per key at a time."""
        return await self._checking.run(digest, lambda: self._ask(digest, entry))

    async def _ask(
        self, digest: bytes, entry: tuple[float, ValidKey | None] | None
    ) -> ValidKey | None:
        try:
            found = await self._lookup(digest)
        except Exception as exc:
            if entry is None:
                raise
            log.warning("api key check failed, using the last answer", error=repr(exc))
            return entry[1]
        self._remember(digest, found)
        return found

    def _remember(self, digest: bytes, found: ValidKey | None) -> None:
        if len(self._checked) >= MAX_REMEMBERED:
            self._checked.clear()
        self._checked[digest] = (time.monotonic(), found)

    async def _lookup(self, digest: bytes) -> ValidKey | None:
        query = (
            select(ApiKey.id, ApiKey.application_id, ApiKey.expires_at, ApiKey.last_used_at)
            .join(Application, Application.id == ApiKey.application_id)
            .where(
                ApiKey.key_hash == digest,
                ApiKey.revoked_at.is_(None),
                Application.deleted_at.is_(None),
            )
        )
        async with self._sessions() as session:
            row = (await session.execute(query)).one_or_none()
        return None if row is None else ValidKey(*row)

    def _touch(self, key: ValidKey, now: datetime) -> None:
        last = self._touched.get(key.id) or key.last_used_at
        if last is not None and now - last < LAST_USED_EVERY:
            return
        if len(self._touched) >= MAX_REMEMBERED:
            self._touched.clear()
        self._touched[key.id] = now
        self._background(self._write_last_used(key.id, now))

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write_last_used(self, key_id: uuid.UUID, now: datetime) -> None:
        try:
            async with self._sessions.begin() as session:
                await session.execute(
                    update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now)
                )
        except Exception as exc:  # a hint, not worth failing anything for
            log.warning("api key last use not recorded", key_id=str(key_id), error=repr(exc))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._checking.close()
