"""The pure parts of the subscription cache: views and the per-application index."""

from __future__ import annotations

import uuid

from shared.subscriptions import AppIndex, SubscriptionView

APP = uuid.uuid4()


def view(types: list[str], active: bool = True, sid: uuid.UUID | None = None) -> SubscriptionView:
    return SubscriptionView(
        sid or uuid.uuid4(), "https://e.com/", None, frozenset(types), active, APP
    )


def test_view_wants() -> None:
    assert view([]).wants("anything")
    assert view(["a", "b"]).wants("b")
    assert not view(["a"]).wants("b")
    assert not view([], active=False).wants("a")


def test_index_matches_by_type_plus_every_type() -> None:
    a, ab, every = view(["a"]), view(["a", "b"]), view([])
    index = AppIndex([a, ab, every, view(["c"]), view(["a"], active=False)])
    assert {v.id for v in index.matching("a")} == {a.id, ab.id, every.id}
    assert {v.id for v in index.matching("b")} == {ab.id, every.id}
    assert [v.id for v in index.matching("zzz")] == [every.id]
    assert len(index) == 4  # the inactive one is not held


def test_put_replaces_and_drop_forgets() -> None:
    sid = uuid.uuid4()
    index = AppIndex([view(["a"], sid=sid)])
    index.put(view(["b"], sid=sid))
    assert index.matching("a") == []
    assert [v.id for v in index.matching("b")] == [sid]
    index.put(view(["b"], active=False, sid=sid))
    assert index.matching("b") == []
    assert len(index) == 0
    assert index.by_type == {}  # no empty buckets left behind
    index.drop(uuid.uuid4())  # unknown: nothing happens
