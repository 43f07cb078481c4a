import random

import pytest

from shared.offsets import PartitionOffsets


def test_nothing_started_means_nothing_to_commit() -> None:
    part = PartitionOffsets()
    assert part.commit_point is None
    assert part.due_commit() is None


def test_in_order_completion_commits_one_past_the_last() -> None:
    part = PartitionOffsets()
    for offset in (5, 6, 7):
        assert part.start(offset)
    for offset in (5, 6, 7):
        part.finish(offset)
    assert part.commit_point == 8
    assert part.pending == 0


def test_a_slow_early_record_blocks_commits_past_it() -> None:
    part = PartitionOffsets()
    for offset in range(10):
        part.start(offset)
    for offset in range(1, 10):  # everything but the first finishes
        part.finish(offset)
    assert part.commit_point == 0
    assert part.pending == 10
    assert part.unfinished == 1
    part.finish(0)
    assert part.commit_point == 10
    assert part.pending == 0


def test_commit_point_is_the_first_unfinished_offset() -> None:
    part = PartitionOffsets()
    for offset in (0, 1, 2, 3, 4):
        part.start(offset)
    part.finish(0)
    part.finish(1)
    part.finish(3)
    assert part.commit_point == 2
    part.finish(2)
    assert part.commit_point == 4


def test_gaps_in_offsets_are_fine() -> None:
    part = PartitionOffsets()
    for offset in (10, 13, 20):
        part.start(offset)
    part.finish(13)
    part.finish(10)
    assert part.commit_point == 20
    part.finish(20)
    assert part.commit_point == 21


def test_offsets_not_past_the_highest_seen_are_ignored() -> None:
    part = PartitionOffsets()
    assert part.start(3)
    assert not part.start(3)
    assert not part.start(1)
    part.finish(3)
    assert part.commit_point == 4


def test_finishing_twice_or_unknown_is_an_error() -> None:
    part = PartitionOffsets()
    part.start(1)
    part.start(2)
    part.finish(2)
    with pytest.raises(ValueError, match="not started or is already finished"):
        part.finish(2)
    with pytest.raises(ValueError, match="not started or is already finished"):
        part.finish(7)


def test_due_commit_only_when_the_point_moved() -> None:
    part = PartitionOffsets()
    part.start(0)
    part.start(1)
    assert part.due_commit() is None  # the starting position is already committed
    part.finish(0)
    assert part.due_commit() == 1
    part.committed = 1
    assert part.due_commit() is None
    part.finish(1)
    assert part.due_commit() == 2


def test_random_completion_order_matches_a_brute_force_model() -> None:
    rng = random.Random(7)
    part = PartitionOffsets()
    offsets = list(range(0, 3000, 3))
    for offset in offsets:
        part.start(offset)
    finished: set[int] = set()
    order = offsets[:]
    rng.shuffle(order)
    for offset in order:
        part.finish(offset)
        finished.add(offset)
        first_unfinished = next((o for o in offsets if o not in finished), None)
        expected = first_unfinished if first_unfinished is not None else offsets[-1] + 1
        assert part.commit_point == expected
        assert part.unfinished == len(offsets) - len(finished)
        assert part.pending == len([o for o in offsets if o >= expected])


def test_records_started_behind_a_hung_one_keep_counting_as_pending() -> None:
    """A hung record holds the commit point; the records started after it count as
    pending whether they finished or not, and the offsets keep only what is unfinished."""
    part = PartitionOffsets()
    part.start(100)  # hangs
    for offset in range(101, 5101):
        part.start(offset)
        part.finish(offset)
    assert part.commit_point == 100
    assert part.pending == 5001
    assert part.unfinished == 1
    assert list(part._open) == [100]
    part.finish(100)
    assert (part.commit_point, part.pending, part.unfinished) == (5101, 0, 0)
