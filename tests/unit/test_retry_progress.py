"""Commit point bookkeeping of the retry scheduler (services/retry_scheduler/progress.py)."""

from __future__ import annotations

import pytest

from services.retry_scheduler.progress import InOrderAcks


def test_nothing_finished_means_nothing_to_commit() -> None:
    acks = InOrderAcks()
    assert acks.position is None
    acks.start(5)
    assert acks.position is None
    assert len(acks) == 1


def test_commit_point_is_one_past_the_finished_prefix() -> None:
    acks = InOrderAcks()
    for offset in (5, 6, 7, 8):
        acks.start(offset)
    acks.finish(6)
    acks.finish(8)
    assert acks.position is None  # 5 is still in flight: committing 7 or 9 could lose it
    acks.finish(5)
    assert acks.position == 7
    acks.finish(7)
    assert acks.position == 9
    assert len(acks) == 0


def test_skipped_records_finish_at_once() -> None:
    acks = InOrderAcks()
    acks.start(0)
    acks.skip(1)
    assert acks.position is None
    acks.finish(0)
    assert acks.position == 2


def test_gaps_between_offsets_are_fine() -> None:
    # Compacted topics and transaction markers leave holes in the offsets.
    acks = InOrderAcks()
    acks.start(10)
    acks.start(14)
    acks.finish(14)
    acks.finish(10)
    assert acks.position == 15


def test_position_is_kept_once_everything_is_committed() -> None:
    acks = InOrderAcks()
    acks.skip(3)
    assert acks.position == 4
    assert acks.position == 4
    acks.start(4)
    assert acks.position == 4


@pytest.mark.parametrize("offset", [4, 5])
def test_offsets_must_increase(offset: int) -> None:
    acks = InOrderAcks()
    acks.skip(5)
    assert acks.position == 6
    acks.start(6)
    with pytest.raises(ValueError, match="out of order"):
        acks.start(offset)
