"""Group commit: many small writes become one statement every few milliseconds.

Callers ``add`` an item and await the returned future; it resolves once the item is
durable. One flush runs at a time; items that arrive meanwhile form the next batch, so
batch size grows with load by itself. A batch waits at most ``window`` after its first
item (or until ``max_items``): at 3,000 attempts/s a 20 ms window makes ~60-row COPYs
instead of 3,000 single-row transactions.

A flush the database refuses because of the rows themselves (bad data, a constraint, a
row the driver cannot encode) splits the batch in halves to isolate the one bad item,
which is logged and dropped so it cannot block a partition. Every other failure
(database restarting, connection lost mid-COPY, a driver left in a confused state) is
retried with backoff, forever: the items' offsets stay uncommitted meanwhile, so nothing
is lost and the consumer stalls instead. The test is "refused", not "transient", because
an error nobody foresaw must never drop a row the database did not judge.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import asyncpg

from shared.logging import get_logger
from shared.loopref import LoopRef

T = TypeVar("T")

log = get_logger("dispatcher.batching")

_BACKOFF_FIRST = 0.2
_BACKOFF_MAX = 5.0


class GroupCommit(Generic[T]):
    def __init__(
        self,
        name: str,
        flush: Callable[[list[T]], Awaitable[None]],
        *,
        is_refusal: Callable[[BaseException], bool],
        window: float = 0.02,
        max_items: int = 2000,
    ) -> None:
        self._name = name
        self._flush = flush
        self._is_refusal = is_refusal
        self._window = window
        self._max_items = max_items
        self._items: list[T] = []
        self._futures: list[asyncio.Future[None]] = []
        self._first_at = 0.0
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._loop = LoopRef()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"group-commit-{self._name}")

    def add(self, item: T) -> asyncio.Future[None]:
        if self._closing:
            raise RuntimeError(f"{self._name} writer is closed")
        if not self._items:
            self._first_at = time.monotonic()
            self._wake.set()
        self._items.append(item)
        future = self._loop().create_future()
        self._futures.append(future)
        if len(self._items) >= self._max_items:
            self._full.set()
        return future

    async def close(self, grace: float) -> None:
        """Flush what is buffered (within ``grace`` seconds), then stop."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        self._full.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            log.warning("writer closed with rows unflushed", writer=self._name)
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            for future in self._futures:
                future.cancel()

    async def _run(self) -> None:
        while True:
            if not self._items:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            remaining = self._first_at + self._window - time.monotonic()
            if remaining > 0 and not self._closing and len(self._items) < self._max_items:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._full.wait()
            items, futures = self._items, self._futures
            self._items, self._futures = [], []
            self._wake.clear()
            self._full.clear()
            await self._flush_until_done(items)
            for future in futures:
                if not future.done():  # a waiter cancelled during a rebalance
                    future.set_result(None)

    async def _flush_until_done(self, items: list[T]) -> None:
        backoff = _BACKOFF_FIRST
        while True:
            try:
                await self._flush(items)
                return
            except Exception as exc:
                if self._is_refusal(exc):
                    await self._isolate(items, exc)
                    return
                log.warning(
                    "flush failed, retrying",
                    writer=self._name,
                    rows=len(items),
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in=backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _isolate(self, items: list[T], exc: BaseException) -> None:
        if len(items) == 1:
            log.error(
                "row dropped: the database refuses it",
                writer=self._name,
                error=f"{type(exc).__name__}: {exc}",
            )
            return
        half = len(items) // 2
        for part in (items[:half], items[half:]):
            await self._flush_until_done(part)


def is_refused_row(exc: BaseException) -> bool:
    """The rows, not the database, are the problem: PostgreSQL judged them (invalid data,
    a constraint, a size limit) or the driver could not encode them (asyncpg raises
    ValueError, TypeError or OverflowError before sending). Retrying the same rows
    would fail the same way. A connection that died mid-COPY can surface as
    ``InternalClientError`` ("cannot switch to state ..."), which is not a refusal."""
    return isinstance(
        exc,
        asyncpg.DataError
        | asyncpg.IntegrityConstraintViolationError
        | asyncpg.ProgramLimitExceededError
        | ValueError
        | TypeError
        | ArithmeticError,
    )


class RowWriter(Generic[T]):
    """Rows to PostgreSQL through one group commit, retried while the database is away.
    Subclasses give the flush and a typed ``write``."""

    def __init__(
        self,
        name: str,
        flush: Callable[[list[T]], Awaitable[None]],
        *,
        window: float,
        max_items: int,
    ) -> None:
        self._batch: GroupCommit[T] = GroupCommit(
            name, flush, is_refusal=is_refused_row, window=window, max_items=max_items
        )

    def start(self) -> None:
        self._batch.start()

    async def close(self, grace: float) -> None:
        await self._batch.close(grace)
