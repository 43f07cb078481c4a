"""The head-is-due decision of the retry scheduler (services/retry_scheduler/timing.py)."""

from __future__ import annotations

import pytest

from services.retry_scheduler.timing import TIMER_SLACK, Hold, Split, resume_delay, split_due

NOW = 1_700_000_000.0


def test_empty_batch_has_nothing_to_hold() -> None:
    assert split_due([], NOW) == Split(ready=0, hold=None)


def test_all_due_records_go() -> None:
    batch = [(10, NOW - 5), (11, NOW - 0.001), (12, NOW)]
    assert split_due(batch, NOW) == Split(ready=3, hold=None)


def test_due_exactly_now_is_due() -> None:
    assert split_due([(0, NOW)], NOW) == Split(ready=1, hold=None)


def test_a_record_due_a_microsecond_later_waits() -> None:
    assert split_due([(7, NOW + 1e-6)], NOW) == Split(ready=0, hold=Hold(7, NOW + 1e-6))


def test_the_first_record_not_due_stops_the_batch() -> None:
    batch = [(3, NOW - 1), (4, NOW + 2), (5, NOW - 1), (6, NOW + 1)]
    # Record 5 is due already but sits behind 4: it waits, so the commit point stays one
    # contiguous prefix (it goes when 4 goes, at most jitter late).
    assert split_due(batch, NOW) == Split(ready=1, hold=Hold(offset=4, due_at=NOW + 2))


def test_records_without_due_time_go_at_once() -> None:
    # No due_at (or a poison record, decoded as None): nothing to wait for.
    assert split_due([(0, None), (1, None), (2, NOW + 3)], NOW) == Split(2, Hold(2, NOW + 3))


@pytest.mark.parametrize(
    ("due_at", "expected"),
    [(NOW + 2.5, 2.5 + TIMER_SLACK), (NOW, TIMER_SLACK), (NOW - 10, TIMER_SLACK)],
)
def test_resume_delay_is_never_early_and_never_negative(due_at: float, expected: float) -> None:
    assert resume_delay(due_at, NOW) == pytest.approx(expected)
    assert NOW + resume_delay(due_at, NOW) >= due_at
