"""The benchmarks' sink groups arrivals by key across its chunks, and its polled stats
count each key once however the polls fall between chunks."""

from __future__ import annotations

import pytest

from tests.support.targets import _Arrivals


def test_arrivals_across_chunks_and_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Arrivals, "CHUNK", 3)
    seen = _Arrivals()
    keys = [b"a", b"b", b"c", b"a", b"d", b"e", b"f", b"b", b"g", b"h"]
    polled = []
    for n, key in enumerate(keys, 1):
        seen.record(key)
        if n % 4 == 0:
            polled.append(seen.stats()["unique"])
    assert polled == [3, 6]
    stats = seen.stats()
    assert (stats["requests"], stats["unique"]) == (10, 8)
    assert stats["first"] <= stats["last"]
    grouped = seen.all()
    assert sorted(grouped) == ["a", "b", "c", "d", "e", "f", "g", "h"]
    assert [len(grouped[k]) for k in ("a", "b", "c")] == [2, 2, 1]
    assert grouped["a"][0] <= grouped["a"][1]
    seen.reset()
    assert seen.stats()["requests"] == 0
    assert seen.all() == {}
