"""Per-partition flow control of the dispatcher's consumer (services.dispatcher.consumer).

A partition pauses when it reaches any of its limits and resumes once each limit it
reached is back at half; a limit it did not reach does not hold it paused.
"""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from services.dispatcher import consumer
from services.dispatcher.consumer import Partition


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer, "PARTITION_ACTIVE", 4)
    monkeypatch.setattr(consumer, "PARTITION_BACKLOG", 10)


def _partition(started: range, finished: list[int]) -> Partition:
    part = Partition(TopicPartition("deliveries", 0))
    for offset in started:
        assert part.start(offset)
    for offset in finished:
        part.finish(offset)
    return part


@pytest.mark.usefixtures("small_limits")
def test_paused_for_records_in_progress_it_resumes_behind_a_hung_record() -> None:
    # Offset 0 hangs; 1-3 finished behind it; 4-7 in progress.
    part = _partition(range(8), [1, 2, 3])
    part.paused_for = part.over_limits()
    assert part.paused_for == (True, False, False)
    assert not part.can_resume()
    part.finish(4)
    part.finish(5)
    part.finish(6)
    # Two in progress (0 and 7): half the limit. Eight records still wait behind the hung
    # one, more than half of their limit of ten, which did not pause it.
    assert (part.unfinished, part.pending) == (2, 8)
    assert part.can_resume()


@pytest.mark.usefixtures("small_limits")
def test_paused_for_records_behind_a_hung_one_it_waits_for_them() -> None:
    part = _partition(range(11), list(range(1, 11)))
    part.paused_for = part.over_limits()
    assert part.paused_for == (False, False, True)
    assert (part.unfinished, part.pending) == (1, 11)
    assert not part.can_resume()
    part.finish(0)  # the hung record ends: everything behind it is committable
    assert part.pending == 0
    assert part.can_resume()


@pytest.mark.usefixtures("small_limits")
def test_paused_for_both_it_waits_for_both() -> None:
    part = _partition(range(11), list(range(1, 7)))
    part.paused_for = part.over_limits()
    assert part.paused_for == (True, False, True)
    for offset in (7, 8, 9):
        part.finish(offset)
    assert part.unfinished == 2  # records in progress back at half, backlog not
    assert not part.can_resume()
    part.finish(0)
    part.finish(10)
    assert part.can_resume()


@pytest.mark.usefixtures("small_limits")
def test_under_every_limit_it_is_not_paused() -> None:
    part = _partition(range(3), [])
    assert part.over_limits() == (False, False, False)
    assert not part.paused
