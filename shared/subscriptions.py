"""Subscription cache shared by ingest and the dispatcher.

The hot paths (ingest's signature check, fan-out's matching) read an in-process snapshot
of every subscription instead of querying PostgreSQL per request. The snapshot is reloaded

- at once when any process announces a change on Redis pub/sub (``notify_changed``), so a
  change is visible everywhere well within a second, and
- every ``ttl`` seconds regardless, so a missed message (Redis down) heals by itself.

Fan-out reads an index by application and event type (``FanOutIndex``), so matching an
event costs what it matches, not what other applications hold.

A lookup of an id the snapshot lacks falls through to one PostgreSQL query (the
subscription may have been created a moment ago in another process); misses are
remembered until the next reload so unknown ids cannot turn into a query flood.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.logging import get_logger
from shared.metrics import SUBSCRIPTIONS_LOADED
from shared.models import DEFAULT_APPLICATION_ID, Subscription

log = get_logger("subscriptions")

# Unknown ids remembered between reloads. Each costs ~100 bytes; 100k caps it at ~10 MB
# while a flood of random ids still hits PostgreSQL at most once per id per reload.
MAX_REMEMBERED_MISSES = 100_000


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    """What the hot paths need to know about a subscription (no ORM object)."""

    id: uuid.UUID
    target_url: str
    secret_key: str | None
    event_types: frozenset[str]
    is_active: bool
    application_id: uuid.UUID = DEFAULT_APPLICATION_ID

    def wants(self, event_type: str) -> bool:
        """Active and subscribed to this type (an empty list means every type)."""
        return self.is_active and (not self.event_types or event_type in self.event_types)

    @classmethod
    def of(cls, sub: Subscription) -> SubscriptionView:
        return cls(
            id=sub.id,
            application_id=sub.application_id,
            target_url=sub.target_url,
            secret_key=sub.secret_key,
            event_types=frozenset(sub.event_types or ()),
            is_active=sub.is_active,
        )


# One application's active subscriptions: by event type, and those that take every type.
_AppEntry = tuple[dict[str, list[SubscriptionView]], list[SubscriptionView]]


class FanOutIndex:
    """Active subscriptions by application, then by event type (plus each application's
    every-type subscriptions): ``matching`` touches only what it returns."""

    __slots__ = ("_by_app",)

    def __init__(self, views: Iterable[SubscriptionView]) -> None:
        self._by_app: dict[uuid.UUID, _AppEntry] = {}
        for view in views:
            if not view.is_active:
                continue
            by_type, every = self._by_app.setdefault(view.application_id, ({}, []))
            if not view.event_types:
                every.append(view)
            for event_type in view.event_types:
                by_type.setdefault(event_type, []).append(view)

    def matching(self, application_id: uuid.UUID, event_type: str) -> list[SubscriptionView]:
        entry = self._by_app.get(application_id)
        if entry is None:
            return []
        by_type, every = entry
        return [*by_type.get(event_type, ()), *every]


def change_channel(topic_prefix: str) -> str:
    return f"{topic_prefix}:subs:changed"


async def notify_changed(redis: Redis, topic_prefix: str, subscription_id: uuid.UUID) -> None:
    """Tell every cache to reload. Best effort: the TTL reload covers a lost message."""
    try:
        await redis.publish(change_channel(topic_prefix), str(subscription_id))
    except (RedisError, OSError) as exc:
        log.warning("cache invalidation not published", error=str(exc))


class SubscriptionCache:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        redis: Redis | None,
        topic_prefix: str,
        ttl: float = 5.0,
    ) -> None:
        self._sessions = sessions
        self._redis = redis
        self._channel = change_channel(topic_prefix)
        self._ttl = ttl
        self._by_id: dict[uuid.UUID, SubscriptionView] = {}
        self._index = FanOutIndex(())
        self._misses: set[uuid.UUID] = set()
        self._reload_now = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        await self.reload()
        self._spawn(self._refresher())
        if self._redis is not None:
            self._spawn(self._listener())

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- reads ----------------------------------------------------------------------

    async def get(self, subscription_id: uuid.UUID) -> SubscriptionView | None:
        view = self._by_id.get(subscription_id)
        if view is not None or subscription_id in self._misses:
            return view
        async with self._sessions() as session:
            sub = await session.get(Subscription, subscription_id)
        if sub is None:
            if len(self._misses) >= MAX_REMEMBERED_MISSES:
                self._misses.clear()  # a flood of random ids must not grow memory
            self._misses.add(subscription_id)
            return None
        view = SubscriptionView.of(sub)
        self._by_id[subscription_id] = view
        return view

    def matching(self, application_id: uuid.UUID, event_type: str) -> list[SubscriptionView]:
        """Every active subscription of the application that wants ``event_type`` (fan-out)."""
        return self._index.matching(application_id, event_type)

    def __len__(self) -> int:
        return len(self._by_id)

    # --- refresh --------------------------------------------------------------------

    async def reload(self) -> None:
        # Every change committed before this moment is in the snapshot: the gauge lets
        # an operator (or a test) see how stale a process's view can be.
        began = time.time()
        async with self._sessions() as session:
            subs: Iterable[Subscription] = (await session.execute(select(Subscription))).scalars()
            snapshot = {s.id: SubscriptionView.of(s) for s in subs}
        self._by_id = snapshot
        self._index = FanOutIndex(snapshot.values())
        self._misses = set()
        SUBSCRIPTIONS_LOADED.set(began)

    def invalidate(self) -> None:
        """Reload soon (used by the process that made the change, and by the listener)."""
        self._misses = set()
        self._reload_now.set()

    async def _refresher(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload_now.wait(), self._ttl)
            self._reload_now.clear()
            try:
                await self.reload()
            except Exception as exc:  # keep serving the last snapshot; retry next tick
                log.warning("subscription reload failed", error=str(exc))

    async def _listener(self) -> None:
        assert self._redis is not None
        backoff = 0.5
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                backoff = 0.5
                # A message published while we were disconnected was lost: reload once.
                self.invalidate()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self.invalidate()
            except (RedisError, OSError) as exc:
                log.warning("subscription change listener down", error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
