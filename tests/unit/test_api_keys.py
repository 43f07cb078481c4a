"""KeyStore's cache: one PostgreSQL check per key at a time, stale answers bounded."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.ingest.applications import keys
from services.ingest.applications.keys import KeyStore, ValidKey, mint_key


class CountingStore(KeyStore):
    def __init__(self) -> None:
        super().__init__(None)  # type: ignore[arg-type]
        self.lookups = 0
        self.valid: ValidKey | None = ValidKey(uuid.uuid4(), uuid.uuid4(), None, None)
        self.delay = 0.05

    async def _lookup(self, digest: bytes) -> ValidKey | None:
        self.lookups += 1
        await asyncio.sleep(self.delay)
        return self.valid

    def _touch(self, key: ValidKey, now: object) -> None:
        pass  # no database to write last use to


async def test_concurrent_requests_share_one_check() -> None:
    store = CountingStore()
    key = mint_key()
    answers = await asyncio.gather(*(store.authenticate(key) for _ in range(100)))
    assert all(a == store.valid for a in answers)
    assert store.lookups == 1


async def test_a_stale_answer_is_used_while_one_check_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keys, "CHECK_SECONDS", 0.05)
    monkeypatch.setattr(keys, "MAX_AGE", 0.5)
    store = CountingStore()
    key = mint_key()
    assert await store.authenticate(key) is not None
    await asyncio.sleep(0.1)  # past CHECK_SECONDS, within MAX_AGE
    store.valid = None  # revoked meanwhile
    store.delay = 0.2
    answers = await asyncio.gather(*(store.authenticate(key) for _ in range(20)))
    assert all(a is not None for a in answers)  # nobody waited for the check
    assert store.lookups == 2  # one background check for all of them
    await asyncio.sleep(0.3)
    assert await store.authenticate(key) is None  # the check's answer is in


async def test_past_max_age_requests_wait_for_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "CHECK_SECONDS", 0.01)
    monkeypatch.setattr(keys, "MAX_AGE", 0.05)
    store = CountingStore()
    key = mint_key()
    assert await store.authenticate(key) is not None
    await asyncio.sleep(0.1)
    store.valid = None
    assert await store.authenticate(key) is None
    assert await store.authenticate("hsk_short") is None  # malformed: no check at all
    assert store.lookups == 2
    await store.close()
