"""SubscriptionCache without a database: snapshot reads, remembered misses, invalidation."""

from __future__ import annotations

import uuid
from types import TracebackType
from typing import Any

from shared.models import DEFAULT_APPLICATION_ID, Subscription
from shared.subscriptions import SubscriptionCache, SubscriptionView


class _Result:
    def __init__(self, rows: list[Subscription]) -> None:
        self._rows = rows

    def scalars(self) -> list[Subscription]:
        return self._rows


class _Session:
    def __init__(self, db: FakeDb) -> None:
        self._db = db

    async def __aenter__(self) -> _Session:
        return self

    async def __aexit__(
        self, *_: type[BaseException] | BaseException | TracebackType | None
    ) -> None:
        return None

    async def get(self, _model: Any, key: uuid.UUID) -> Subscription | None:
        self._db.gets += 1
        return self._db.rows.get(key)

    async def execute(self, _query: Any) -> _Result:
        self._db.reloads += 1
        return _Result(list(self._db.rows.values()))


class FakeDb:
    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, Subscription] = {}
        self.gets = 0
        self.reloads = 0

    def __call__(self) -> _Session:
        return _Session(self)

    def add(self, **fields: Any) -> Subscription:
        sub = Subscription(
            id=uuid.uuid4(),
            application_id=DEFAULT_APPLICATION_ID,
            target_url="https://e.com/",
            secret_key=None,
            event_types=[],
            is_active=True,
        )
        for k, v in fields.items():
            setattr(sub, k, v)
        self.rows[sub.id] = sub
        return sub


def _cache(db: FakeDb) -> SubscriptionCache:
    return SubscriptionCache(db, None, "unit", ttl=60)  # type: ignore[arg-type]


def test_view_wants() -> None:
    def view(types: list[str], active: bool = True) -> SubscriptionView:
        return SubscriptionView(uuid.uuid4(), "https://e.com/", None, frozenset(types), active)

    assert view([]).wants("anything")
    assert view(["a", "b"]).wants("b")
    assert not view(["a"]).wants("b")
    assert not view([], active=False).wants("a")


async def test_hits_come_from_the_snapshot_and_misses_are_remembered() -> None:
    db = FakeDb()
    known = db.add(event_types=["a"])
    cache = _cache(db)
    await cache.reload()
    assert db.reloads == 1
    for _ in range(3):
        view = await cache.get(known.id)
        assert view is not None
        assert view.event_types == frozenset({"a"})
    assert db.gets == 0  # no query per lookup

    unknown = uuid.uuid4()
    for _ in range(3):
        assert await cache.get(unknown) is None
    assert db.gets == 1  # one query, then remembered

    # Created elsewhere a moment ago: found after invalidation, without waiting for a reload.
    db.rows[unknown] = db.add()
    db.rows[unknown].id = unknown
    cache.invalidate()
    assert await cache.get(unknown) is not None
    assert db.gets == 2


async def test_reload_replaces_the_snapshot() -> None:
    db = FakeDb()
    sub = db.add(event_types=["a"])
    cache = _cache(db)
    await cache.reload()
    assert [v.id for v in cache.matching(DEFAULT_APPLICATION_ID, "a")] == [sub.id]
    sub.is_active = False
    assert cache.matching(DEFAULT_APPLICATION_ID, "a")  # the snapshot is a copy, not the ORM object
    await cache.reload()
    assert cache.matching(DEFAULT_APPLICATION_ID, "a") == []
    assert len(cache) == 1
