"""Attempt rows (the original ``webhook_logs``) and their batched writer (COPY)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import asyncpg

from services.dispatcher.batching import GroupCommit
from shared.models import ATTEMPT_COLUMNS, AttemptStatus
from shared.records import DeliveryJob

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
    )


def is_transient_db_error(exc: BaseException) -> bool:
    """Worth retrying the same rows: the database, not the data, is the problem."""
    return isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.InterfaceError
        | asyncpg.PostgresConnectionError
        | asyncpg.CannotConnectNowError
        | asyncpg.TooManyConnectionsError
        | asyncpg.AdminShutdownError
        | asyncpg.CrashShutdownError,
    )


class AttemptWriter:
    """``write(row)`` resolves once the row is committed (COPY, a batch at a time)."""

    def __init__(self, pool: asyncpg.Pool, *, window: float = 0.02, max_rows: int = 2000):
        self._pool = pool
        self._batch: GroupCommit[AttemptRow] = GroupCommit(
            "attempts",
            self._copy,
            is_transient=is_transient_db_error,
            window=window,
            max_items=max_rows,
        )

    def start(self) -> None:
        self._batch.start()

    async def close(self, grace: float) -> None:
        await self._batch.close(grace)

    def write(self, row: AttemptRow) -> asyncio.Future[None]:
        return self._batch.add(row)

    async def _copy(self, rows: list[AttemptRow]) -> None:
        async with self._pool.acquire() as conn:
            await conn.copy_records_to_table(
                "delivery_attempts", records=rows, columns=ATTEMPT_COLUMNS
            )
