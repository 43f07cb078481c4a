"""When a tier partition's records may go: pure functions, no I/O.

``due_at`` is an absolute UTC timestamp that the dispatcher computed from its wall clock,
so the scheduler compares it with its own wall clock (``time.time()``), never with the
event loop's monotonic clock. Clock skew between the two hosts moves a retry by the skew:
a scheduler whose clock is behind fires late; one whose clock runs ahead of the
dispatcher's fires early by that much. With NTP the skew is a few milliseconds against
tiers of seconds to hours, so keep the hosts synchronised; on one host the question does
not arise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Loop timers run on the monotonic clock and may disagree with time.time() by a few ms
# (NTP slewing, timer granularity). Waking 5 ms late costs nothing; waking early costs a
# fetch round trip and a second pause.
TIMER_SLACK = 0.005


@dataclass(frozen=True, slots=True)
class Hold:
    """The first record of a partition that is not yet due."""

    offset: int
    due_at: float  # epoch seconds


@dataclass(frozen=True, slots=True)
class Split:
    ready: int  # records from the start of the batch that may be re-published now
    hold: Hold | None  # where to seek back and pause until it is due


def split_due(batch: Sequence[tuple[int, float | None]], now: float) -> Split:
    """Split one partition's batch, in offset order, at its first record not yet due.

    ``batch`` holds ``(offset, due_at)`` pairs; ``due_at`` is None for a record that
    carries no due time (or could not be decoded): nothing to wait for, it goes at once.
    Records after the first one not yet due wait too, even if their own due time has
    passed: a tier holds one fixed delay, so offset order is due order up to jitter, and
    holding them keeps the commit point simple (one contiguous prefix per partition).
    """
    for index, (offset, due_at) in enumerate(batch):
        if due_at is not None and due_at > now:
            return Split(ready=index, hold=Hold(offset=offset, due_at=due_at))
    return Split(ready=len(batch), hold=None)


def resume_delay(due_at: float, now: float) -> float:
    """Seconds until a paused partition should be fetched again."""
    return max(0.0, due_at - now) + TIMER_SLACK
