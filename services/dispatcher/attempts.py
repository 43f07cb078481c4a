"""Attempt rows (the original ``webhook_logs``) and their batched writer (COPY)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg

from services.dispatcher import streaks
from services.dispatcher.batching import RowWriter
from services.dispatcher.streaks import Deactivated, Streak, StreakPolicy
from shared.logging import get_logger
from shared.models import ATTEMPT_COLUMNS, AttemptStatus
from shared.records import DeliveryJob

log = get_logger("dispatcher.attempts")

# One tuple per row, in ATTEMPT_COLUMNS order (what COPY takes).
AttemptRow = tuple[
    uuid.UUID,
    datetime,
    uuid.UUID,
    uuid.UUID,
    uuid.UUID,
    str,
    str,
    int,
    int | None,
    str,
    str | None,
    int | None,
    str | None,
    str,
    datetime,
    uuid.UUID,
]

_ERROR_LIMIT = 2000


def clean_text(text: str | None, limit: int = _ERROR_LIMIT) -> str | None:
    """PostgreSQL text cannot hold NUL; a target's answer can."""
    if text is None:
        return None
    return text[:limit].replace("\x00", "\ufffd")


def attempt_row(
    job: DeliveryJob,
    *,
    target_url: str,
    status: AttemptStatus,
    status_code: int | None,
    error: str | None,
    duration_ms: int | None,
    excerpt: str | None,
    now: datetime,
) -> AttemptRow:
    return (
        uuid.uuid4(),
        now,
        job.delivery_id,
        job.event_id,
        job.subscription_id,
        target_url,
        job.event_type,
        job.attempt,
        status_code,
        status.value,
        clean_text(error),
        duration_ms,
        clean_text(excerpt),
        job.trigger,
        job.first_received_at,
        job.application_id,
    )


# ix_attempts_delivery serves it, one index probe per attempt partition from ``since``.
_SUCCEEDED = """
SELECT 1 FROM delivery_attempts
WHERE delivery_id = $1 AND created_at >= $2 AND status = 'SUCCESS' LIMIT 1
"""


class AttemptWriter(RowWriter[tuple[AttemptRow, Streak | None]]):
    """``write(row)`` resolves once the row is committed (COPY, a batch at a time).

    A row written with a ``streak`` mark also counts towards its subscription's failure
    streak (``streaks.py``): after each COPY, one statement updates the batch's
    subscriptions, and ``on_deactivated`` hears of those it deactivated. The streak
    update is best effort: a failure is logged and never re-copies the rows.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        window: float = 0.02,
        max_rows: int = 2000,
        streak_policy: StreakPolicy | None = None,
        on_deactivated: Callable[[list[Deactivated]], Awaitable[None]] | None = None,
    ):
        super().__init__("attempts", self._copy, window=window, max_items=max_rows)
        self._pool = pool
        self._policy = streak_policy
        self._on_deactivated = on_deactivated

    def write(self, row: AttemptRow, streak: Streak | None = None) -> asyncio.Future[None]:
        return self._batch.add((row, streak))

    async def succeeded(self, delivery_id: uuid.UUID, since: datetime) -> bool:
        """Has the delivery a SUCCESS row (attempts made from ``since`` on)? When the
        database does not answer: False (a duplicate at worst, never a loss)."""
        try:
            async with self._pool.acquire() as conn:
                return await conn.fetchval(_SUCCEEDED, delivery_id, since) is not None
        except Exception as exc:
            log.warning("success not checked", delivery_id=str(delivery_id), error=repr(exc))
            return False

    async def _copy(self, items: list[tuple[AttemptRow, Streak | None]]) -> None:
        async with self._pool.acquire() as conn:
            await self.copy(conn, [row for row, _ in items])
            deactivated = await self.count_streaks(conn, items)
        await self.announce(deactivated)

    @staticmethod
    async def copy(conn: asyncpg.Connection, rows: list[AttemptRow]) -> None:
        """The rows, now, on ``conn`` (inside the caller's transaction if it has one)."""
        await conn.copy_records_to_table("delivery_attempts", records=rows, columns=ATTEMPT_COLUMNS)

    async def count_streaks(
        self, conn: asyncpg.Connection, items: list[tuple[AttemptRow, Streak | None]]
    ) -> list[Deactivated]:
        """Count the marked rows towards their subscriptions' failure streaks; best
        effort (outside any transaction: a failure here must not undo the rows)."""
        if self._policy is None:
            return []
        # (subscription_id, mark, created_at) of the rows that count.
        marks = [(row[4], mark, row[1]) for row, mark in items if mark is not None]
        if not marks:
            return []
        try:
            return await streaks.apply(conn, streaks.tally(marks), self._policy, datetime.now(UTC))
        except Exception as exc:
            log.warning("failure streaks not updated", rows=len(marks), error=repr(exc))
            return []

    async def announce(self, deactivated: list[Deactivated]) -> None:
        if deactivated and self._on_deactivated is not None:
            try:
                await self._on_deactivated(deactivated)
            except Exception as exc:  # the rows are durable: never copy them again
                log.warning("deactivation not announced", error=repr(exc))
