"""Per-partition offset tracking for out-of-order completion (design §3).

Records of one partition are started in offset order but finish in any order (a slow
target, a fast one). Kafka stores one number per partition, "everything before this is
done", so the safe commit point is the first offset still unfinished: one slow early
record holds the commit point back until it finishes, however many later records have.

Pure bookkeeping: no I/O, no clock. A crash replays everything after the commit point,
which is exactly the at-least-once promise.
"""

from __future__ import annotations


class PartitionOffsets:
    """Started/finished offsets of one partition during one assignment."""

    __slots__ = ("_high", "_open", "_started", "committed")

    def __init__(self) -> None:
        # Started and not finished, in offset order (records start in offset order and a
        # dict keeps its insertion order), each with the count of offsets started before
        # it. A finished offset goes at once. Until 2026-12-07 a queue of started offsets
        # kept the finished ones behind a hung record (and a set of them) for its whole
        # timeout: every record of the last 10 s with 1 % of requests hanging, an object
        # each, all of them cold by the time the hung record let them go. Finding the
        # first entry skips the deleted ones before it (in C, and a growing dict drops
        # them), which costs microseconds when the flow limits are checked, once a fetch.
        self._open: dict[int, int] = {}
        self._started = 0  # offsets started in this assignment
        self._high: int | None = None  # highest offset started
        # Last commit point handed to the broker (or the assignment's starting position).
        self.committed: int | None = None

    def start(self, offset: int) -> bool:
        """Track ``offset``. False (and ignored) when not past every offset seen."""
        if self._high is None:
            # The first record of an assignment sits at the position the group had
            # committed (or the log start): committing it again would be a no-op.
            if self.committed is None:
                self.committed = offset
        elif offset <= self._high:
            return False
        self._high = offset
        self._open[offset] = self._started
        self._started += 1
        return True

    def finish(self, offset: int) -> None:
        try:
            del self._open[offset]
        except KeyError:
            raise ValueError(f"offset {offset} was not started or is already finished") from None

    @property
    def pending(self) -> int:
        """Started and not yet committable (finished ones behind a slow one count)."""
        for started_before in self._open.values():  # the first unfinished offset's
            return self._started - started_before
        return 0

    @property
    def unfinished(self) -> int:
        """Started and not finished: the work still in progress."""
        return len(self._open)

    @property
    def commit_point(self) -> int | None:
        """The offset to commit: first unfinished, or one past the highest started."""
        for offset in self._open:  # the first
            return offset
        return None if self._high is None else self._high + 1

    def due_commit(self) -> int | None:
        """The commit point when it moved past the last one committed, else None."""
        point = self.commit_point
        if point is None or (self.committed is not None and point <= self.committed):
            return None
        return point
