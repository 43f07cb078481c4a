"""Failure streaks: a subscription that has failed every delivery for long enough is
deactivated (design §6).

A *failed delivery* is a terminal ``FAILURE`` row of an active subscription (attempts
used up, 410 Gone, target refused); a ``SUCCESS`` resets the streak. ``FAILED_ATTEMPT``
rows say nothing yet: the delivery may still succeed. Deliveries never attempted (the
subscription was already deleted or inactive, breaker open, target stalled) do not count.

Counters are kept in ``subscriptions.failure_streak`` / ``failing_since`` and updated
once per attempt-row flush (every ≤ 20 ms) by one statement for the whole batch, not
once per attempt: ``tally`` folds a batch's outcomes into one change per subscription.
A subscription whose streak reaches ``failures`` deliveries *and* whose first failed
delivery is at least ``after`` old is deactivated in the same statement, with a reason.

At-least-once applies: rows replayed after a crash may count twice. Deactivation is
conservative anyway (50 deliveries over a day by default) and undone with
``PATCH is_active=true``, which also clears the streak.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg


class Streak(enum.Enum):
    """What one attempt row means for its subscription's failure streak."""

    FAILED = "failed"  # a delivery ended in FAILURE
    SUCCEEDED = "succeeded"  # any success resets the streak


@dataclass(frozen=True, slots=True)
class StreakPolicy:
    failures: int  # failed deliveries in a row …
    after: timedelta  # … and at least this long since the first of them


@dataclass(slots=True)
class StreakChange:
    """A batch's net effect on one subscription: if ``reset``, the streak restarts from
    zero before ``failures`` more are added; ``first_failed_at`` is the earliest of
    those failures (None when there are none)."""

    reset: bool = False
    failures: int = 0
    first_failed_at: datetime | None = None


def tally(marks: Iterable[tuple[uuid.UUID, Streak, datetime]]) -> dict[uuid.UUID, StreakChange]:
    """Fold ``(subscription_id, mark, at)`` in the order rows were written: a success
    wipes out the failures before it in the batch."""
    changes: dict[uuid.UUID, StreakChange] = {}
    for sub_id, mark, at in marks:
        change = changes.get(sub_id)
        if change is None:
            change = changes[sub_id] = StreakChange()
        if mark is Streak.SUCCEEDED:
            change.reset, change.failures, change.first_failed_at = True, 0, None
        else:
            change.failures += 1
            if change.first_failed_at is None or at < change.first_failed_at:
                change.first_failed_at = at
    return changes


# One statement per flush. Rows are locked in id order (the caller sorts, and LockRows
# sits above the Sort) so two dispatchers updating overlapping batches cannot deadlock.
# A success for a subscription already at zero matches nothing in ``n``: no row write.
#   $1 ids, $2 reset flags, $3 failure counts, $4 first failure times (null if none),
#   $5 threshold count, $6 latest failing_since that may deactivate (now - after)
_UPDATE = """
WITH b AS (
    SELECT * FROM unnest($1::uuid[], $2::bool[], $3::int[], $4::timestamptz[])
        AS b(id, reset, failures, first_failed_at)
), n AS (
    SELECT s.id, s.is_active AS was_active,
        CASE WHEN b.reset THEN 0 ELSE s.failure_streak END + b.failures AS streak,
        CASE WHEN b.failures = 0 THEN NULL
             WHEN b.reset THEN b.first_failed_at
             ELSE COALESCE(s.failing_since, b.first_failed_at) END AS since
    FROM subscriptions s JOIN b ON s.id = b.id
    WHERE b.failures > 0 OR s.failure_streak <> 0 OR s.failing_since IS NOT NULL
    ORDER BY s.id
    FOR UPDATE OF s
), d AS (
    SELECT n.*, (n.was_active AND n.streak >= $5 AND n.since <= $6) AS deactivate FROM n
)
UPDATE subscriptions s
SET failure_streak = d.streak,
    failing_since = d.since,
    is_active = s.is_active AND NOT d.deactivate,
    deactivated_reason = CASE WHEN d.deactivate THEN $7 || to_char(
            d.since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'
        ) || ' (' || d.streak || ' in a row)' ELSE s.deactivated_reason END,
    updated_at = CASE WHEN d.deactivate THEN now() ELSE s.updated_at END
FROM d
WHERE s.id = d.id
RETURNING s.id, d.deactivate, d.streak, d.since
"""
_REASON_PREFIX = "failed every delivery since "


@dataclass(frozen=True, slots=True)
class Deactivated:
    subscription_id: uuid.UUID
    streak: int
    since: datetime


async def apply(
    conn: asyncpg.Connection,
    changes: dict[uuid.UUID, StreakChange],
    policy: StreakPolicy,
    now: datetime,
) -> list[Deactivated]:
    """Write a batch's changes; returns the subscriptions this batch deactivated."""
    ids = sorted(changes)
    rows = await conn.fetch(
        _UPDATE,
        ids,
        [changes[i].reset for i in ids],
        [changes[i].failures for i in ids],
        [changes[i].first_failed_at for i in ids],
        policy.failures,
        now - policy.after,
        _REASON_PREFIX,
    )
    return [Deactivated(r["id"], r["streak"], r["since"]) for r in rows if r["deactivate"]]
