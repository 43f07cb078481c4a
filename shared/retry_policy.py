"""Retry math (design §6): pure functions, no I/O.

After a failed attempt ``n`` (1-based) the next attempt waits ``schedule[n-1]``, lengthened
by jitter of up to ``jitter`` (never shortened), and travels through the tier topic for that
delay. ``Retry-After`` on 429/503 lifts the delay to at least that long, capped by the
largest tier. ``410 Gone`` and refused targets are final.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

from shared.topics import Topics

# Status codes whose Retry-After header we honour.
RETRY_AFTER_STATUSES = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class RetryDecision:
    attempt: int  # the number of the next attempt
    topic: str  # the tier topic that holds it until due
    due_at: datetime


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """Seconds (``"120"``) or an HTTP date; None when absent or unparseable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return timedelta(seconds=int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(when - now, timedelta(0))


def next_retry(
    *,
    attempt: int,
    schedule: tuple[timedelta, ...],
    topics: Topics,
    now: datetime,
    jitter: float,
    retry_after: timedelta | None = None,
    rng: random.Random | None = None,
) -> RetryDecision | None:
    """The retry after failed attempt ``attempt``, or None when attempts are exhausted."""
    if attempt < 1 or attempt > len(schedule):
        return None
    base = schedule[attempt - 1]
    if retry_after is not None:
        base = max(base, min(retry_after, max(schedule)))
    # The tier is chosen from the un-jittered delay so that a tier holds one fixed delay;
    # jitter then only pushes due_at later, which keeps offset order close to due order.
    tier_delay, topic = topics.tier_for(base)
    delay = max(base, tier_delay)
    if jitter:
        delay += delay * (rng or random).uniform(0, jitter)
    return RetryDecision(attempt=attempt + 1, topic=topic, due_at=now + delay)
