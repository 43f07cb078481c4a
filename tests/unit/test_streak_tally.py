"""``tally``: a batch of attempt outcomes folded into one change per subscription."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.dispatcher.streaks import Streak, StreakChange, tally

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_failures_add_up_from_the_earliest() -> None:
    a = uuid.uuid4()
    changes = tally([(a, Streak.FAILED, at(5)), (a, Streak.FAILED, at(3))])
    assert changes == {a: StreakChange(reset=False, failures=2, first_failed_at=at(3))}


def test_a_success_wipes_out_earlier_failures_of_the_batch_only() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    changes = tally(
        [
            (a, Streak.FAILED, at(1)),
            (b, Streak.FAILED, at(1)),
            (a, Streak.SUCCEEDED, at(2)),
            (a, Streak.FAILED, at(3)),
        ]
    )
    assert changes[a] == StreakChange(reset=True, failures=1, first_failed_at=at(3))
    assert changes[b] == StreakChange(reset=False, failures=1, first_failed_at=at(1))


def test_a_lone_success_is_a_reset() -> None:
    a = uuid.uuid4()
    assert tally([(a, Streak.SUCCEEDED, at(1))]) == {a: StreakChange(reset=True)}
