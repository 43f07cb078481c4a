"""Which offset of a tier partition may be committed: pure bookkeeping, no I/O.

Records of one partition are started in offset order and finish (publish acknowledged, or
skipped as poison) in any order. The commit point is one past the longest finished prefix,
so a crash re-reads every record whose publish was not acknowledged (design §3).
"""

from __future__ import annotations

from collections import deque


class InOrderAcks:
    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._finished: set[int] = set()
        self._position: int | None = None

    def __len__(self) -> int:
        """Records started and not yet part of the committable prefix."""
        return len(self._pending)

    def start(self, offset: int) -> None:
        if (self._pending and offset <= self._pending[-1]) or (
            self._position is not None and offset < self._position
        ):
            raise ValueError(f"offset {offset} started out of order")
        self._pending.append(offset)

    def finish(self, offset: int) -> None:
        self._finished.add(offset)

    def skip(self, offset: int) -> None:
        """A record with nothing to publish (poison): finished as soon as it is started."""
        self.start(offset)
        self.finish(offset)

    @property
    def position(self) -> int | None:
        """The offset to commit (one past the finished prefix); None before any finished."""
        while self._pending and self._pending[0] in self._finished:
            offset = self._pending.popleft()
            self._finished.discard(offset)
            self._position = offset + 1
        return self._position
