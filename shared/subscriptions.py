"""Subscriptions as the hot paths see them: a bounded cache, kept current row by row.

Ingest's signature check and the dispatcher's fan-out read subscriptions on every request
and event, so they read memory, not PostgreSQL. What a process holds is bounded and
follows what it uses, not the size of the table (1,000,000 subscriptions in 100,000
applications must not cost a process a copy of them all):

- **by id** (targeted ingest, the delivery stage): an LRU of ``MAX_IDS`` views; a miss
  is one indexed query, and unknown ids are remembered (bounded) so a flood of random ids
  cannot become a query flood.
- **by application** (fan-out): an application's active subscriptions, indexed by event
  type plus its every-type ones, loaded whole on its first event (one indexed query) and
  kept in an LRU bounded by ``MAX_APP_VIEWS`` views in all. Matching an event costs what
  it matches. Why per application: fan-out needs every subscription of one application
  and none of the others, so that is the unit to load and to evict; an application with
  more subscriptions than the bound is still served, it is just not kept.

Changes (``subscription_changes``): a trigger on ``subscriptions`` (migration 0003) logs
the id of every inserted, deleted or changed row with the id of its transaction. Each
process polls that log from a watermark: the oldest transaction still running when it
last polled (``pg_snapshot_xmin``), so a change committed late by a long transaction is
read on a later poll instead of skipped. For each id it holds, it re-reads that one row
and applies it; ids it does not hold cost nothing. A poll runs at once when any process
announces a change on Redis pub/sub (``notify_changed``), and every ``poll_interval``
seconds regardless: the consistency pass that heals a lost message, at the price of one
indexed query. Polling never reads the subscriptions table as a whole.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.filters import FilterError, Predicate, compile_filter
from shared.logging import get_logger
from shared.metrics import SUBSCRIPTIONS_LOADED
from shared.models import DEFAULT_APPLICATION_ID, Subscription
from shared.singleflight import SingleFlight

log = get_logger("subscriptions")

# Views kept by id. A view is ~0.5 KB with its strings: 100,000 is ~50 MB at most.
MAX_IDS = 100_000
# Views kept in application indexes, all applications together (~50 MB at most).
MAX_APP_VIEWS = 100_000
# Unknown ids remembered between changes; each costs ~100 bytes.
MAX_REMEMBERED_MISSES = 100_000
# Changes remembered so that a load racing a poll can be corrected (see _settle). At 50
# changes/s that is over three minutes of them, far longer than any load takes.
RECENT_CHANGES = 10_000

# One statement, one snapshot: every transaction older than its xmin has ended, so the
# next poll can start there and still see what commits after this one read the log.
_POLL = text(
    """
    WITH snap AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
    SELECT snap.xmin::text AS xmin, c.id, c.txid::text AS txid, c.subscription_id,
        c.application_id
    FROM snap
    LEFT JOIN subscription_changes c ON c.txid >= CAST(CAST(:since AS text) AS xid8)
    LIMIT :cap
    """
)
# More changes than this in one poll (a bulk import, a mass update) are not read one by
# one: the process drops what it holds and reloads lazily. Reading a million change rows
# froze every process's loop for ~3 s after a bulk load; dropping costs one PostgreSQL
# read per application and id as they are next used.
OVERFLOW = 5_000
_XMIN = text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    """What the hot paths need to know about a subscription (no ORM object)."""

    id: uuid.UUID
    target_url: str
    secret_key: str | None
    event_types: frozenset[str]
    is_active: bool
    application_id: uuid.UUID = DEFAULT_APPLICATION_ID
    # The subscription's payload filter, compiled once per version of the row (a view is
    # built per version); None: every body.
    accepts: Predicate | None = field(default=None, compare=False)
    # Custom headers, in the order given; sent before Hookstream's own, which win.
    headers: tuple[tuple[str, str], ...] = ()
    # The secret a rotation replaced, valid (signing and verifying) until this instant.
    previous_secret: str | None = None
    previous_until: datetime | None = None
    rate_limit: int | None = None
    # Delivered one at a time, in order (services/dispatcher/ordered.py).
    ordered: bool = False

    def secrets(self, now: datetime) -> tuple[str, ...]:
        """The secrets that sign and verify now: the current one first, then the previous
        one while its overlap lasts."""
        if self.secret_key is None:
            return ()
        previous, until = self.previous_secret, self.previous_until
        if previous is not None and until is not None and now < until:
            return (self.secret_key, previous)
        return (self.secret_key,)

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
            accepts=_compiled(sub),
            headers=tuple((sub.headers or {}).items()),
            previous_secret=sub.previous_secret_key,
            previous_until=sub.previous_secret_expires_at,
            rate_limit=sub.rate_limit,
            ordered=sub.ordered,
        )


def _compiled(sub: Subscription) -> Predicate | None:
    if sub.filter is None:
        return None
    try:
        return compile_filter(sub.filter)
    except FilterError as exc:
        # Written through the API it compiled; a row edited by hand may not. Deliver
        # nothing to it rather than everything, and say why.
        log.warning("stored filter does not compile", subscription_id=str(sub.id), error=str(exc))
        return lambda _body: False


class AppIndex:
    """One application's active subscriptions: by event type, and those taking every type."""

    __slots__ = ("by_type", "every", "views")

    def __init__(self, views: Iterable[SubscriptionView] = ()) -> None:
        self.views: dict[uuid.UUID, SubscriptionView] = {}
        self.by_type: dict[str, dict[uuid.UUID, SubscriptionView]] = {}
        self.every: dict[uuid.UUID, SubscriptionView] = {}
        for view in views:
            self.put(view)

    def put(self, view: SubscriptionView) -> None:
        self.drop(view.id)
        if not view.is_active:
            return
        self.views[view.id] = view
        if not view.event_types:
            self.every[view.id] = view
        for event_type in view.event_types:
            self.by_type.setdefault(event_type, {})[view.id] = view

    def drop(self, subscription_id: uuid.UUID) -> None:
        old = self.views.pop(subscription_id, None)
        if old is None:
            return
        self.every.pop(subscription_id, None)
        for event_type in old.event_types:
            of_type = self.by_type.get(event_type)
            if of_type is not None:
                of_type.pop(subscription_id, None)
                if not of_type:
                    del self.by_type[event_type]

    def matching(self, event_type: str) -> list[SubscriptionView]:
        return [*self.by_type.get(event_type, {}).values(), *self.every.values()]

    def __len__(self) -> int:
        return len(self.views)


def change_channel(topic_prefix: str) -> str:
    return f"{topic_prefix}:subs:changed"


async def notify_changed(redis: Redis, topic_prefix: str, subscription_id: uuid.UUID) -> None:
    """Tell every process to poll the change log now. Best effort: the periodic poll
    covers a lost message."""
    try:
        await redis.publish(change_channel(topic_prefix), str(subscription_id))
    except (RedisError, OSError) as exc:
        log.warning("subscription change not announced", error=str(exc))


class SubscriptionCache:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        redis: Redis | None,
        topic_prefix: str,
        poll_interval: float = 1.0,
        *,
        max_ids: int = MAX_IDS,
        max_app_views: int = MAX_APP_VIEWS,
        overflow: int = OVERFLOW,
    ) -> None:
        self._overflow = overflow
        self._sessions = sessions
        self._redis = redis
        self._channel = change_channel(topic_prefix)
        # Set while the change listener is subscribed: an announcement made before that
        # reaches this process only through the next poll.
        self.listening = asyncio.Event()
        self._interval = poll_interval
        self._max_ids = max_ids
        self._max_app_views = max_app_views
        self._by_id: collections.OrderedDict[uuid.UUID, SubscriptionView] = (
            collections.OrderedDict()
        )
        self._misses: dict[uuid.UUID, None] = {}
        self._apps: collections.OrderedDict[uuid.UUID, AppIndex] = collections.OrderedDict()
        self._app_views = 0
        # One query per cold id or application, however many requests ask at once.
        self._loading: SingleFlight[uuid.UUID, AppIndex] = SingleFlight()
        self._fetching: SingleFlight[uuid.UUID, SubscriptionView | None] = SingleFlight()
        # Poll state: the watermark, a generation per poll, and the recent changes.
        self._since: str | None = None
        # Change rows at or past the watermark already applied (id -> txid): a transaction
        # left open anywhere holds the watermark back, and every poll then returns the same
        # rows again; without this each poll would re-read them all (seconds per poll after
        # a thousand changes).
        self._applied: dict[int, int] = {}
        self._generation = 0
        # The generation of the last poll that dropped everything (an overflow): a load
        # that began before it may hold rows older than the changes it skipped.
        self._dropped_at = 0
        self._recent: collections.deque[tuple[int, uuid.UUID, uuid.UUID]] = collections.deque(
            maxlen=RECENT_CHANGES
        )
        self._poll_now = asyncio.Event()
        self._polling = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        async with self._sessions() as session:
            self._since = (await session.execute(_XMIN)).scalar_one()
        SUBSCRIPTIONS_LOADED.set(time.time())
        self._spawn(self._poller())
        if self._redis is not None:
            self._spawn(self._listener())

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self._loading.close()
        await self._fetching.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- reads ----------------------------------------------------------------------

    async def get(
        self, subscription_id: uuid.UUID, application_id: uuid.UUID | None = None
    ) -> SubscriptionView | None:
        """The subscription, or None when it does not exist. ``application_id``, when the
        caller knows it (a delivery job does), lets an application index loaded for fan-out
        answer too."""
        view = self._by_id.get(subscription_id)
        if view is not None:
            self._by_id.move_to_end(subscription_id)
            return view
        if subscription_id in self._misses:
            return None
        if application_id is not None:
            index = self._apps.get(application_id)
            if index is not None and (view := index.views.get(subscription_id)) is not None:
                return view
        return await self._fetching.run(subscription_id, lambda: self._fetch(subscription_id))

    async def _fetch(self, subscription_id: uuid.UUID) -> SubscriptionView | None:
        generation = self._generation
        found = await self._read([subscription_id])
        view = found.get(subscription_id)
        if self._changed_since(generation, {subscription_id}):
            return view  # a change raced the read: answer, but do not keep it
        if view is None:
            if len(self._misses) >= MAX_REMEMBERED_MISSES:
                self._misses.clear()  # a flood of random ids must not grow memory
            self._misses[subscription_id] = None
        else:
            self._keep(view)
        return view

    async def matching(self, application_id: uuid.UUID, event_type: str) -> list[SubscriptionView]:
        """Every active subscription of the application that wants ``event_type`` (fan-out)."""
        index = self._apps.get(application_id)
        if index is not None:
            self._apps.move_to_end(application_id)
        else:
            index = await self._load_app(application_id)
        return index.matching(event_type)

    def __len__(self) -> int:
        """Views held: by id and in application indexes."""
        return len(self._by_id) + self._app_views

    # --- loading --------------------------------------------------------------------

    async def _read(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, SubscriptionView]:
        async with self._sessions() as session:
            rows = (
                await session.execute(select(Subscription).where(Subscription.id.in_(ids)))
            ).scalars()
            return {row.id: SubscriptionView.of(row) for row in rows}

    def _keep(self, view: SubscriptionView) -> None:
        self._by_id[view.id] = view
        self._by_id.move_to_end(view.id)
        self._misses.pop(view.id, None)
        while len(self._by_id) > self._max_ids:
            self._by_id.popitem(last=False)

    async def _load_app(self, application_id: uuid.UUID) -> AppIndex:
        return await self._loading.run(application_id, lambda: self._read_app(application_id))

    async def _read_app(self, application_id: uuid.UUID) -> AppIndex:
        generation = self._generation
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(Subscription).where(
                        Subscription.application_id == application_id, Subscription.is_active
                    )
                )
            ).scalars()
            index = AppIndex(SubscriptionView.of(row) for row in rows)
        await self._settle(index, application_id, generation)
        if self._dropped_at > generation:
            # Everything was dropped while this loaded: its rows may predate the changes
            # skipped, so answer with them once but do not keep them.
            return index
        if len(index) <= self._max_app_views:
            self._apps[application_id] = index
            self._app_views += len(index)
            self._evict_apps(keep=application_id)
        return index

    async def _settle(self, index: AppIndex, application_id: uuid.UUID, generation: int) -> None:
        """Re-read rows of this application that a poll saw change while it loaded: the
        load's snapshot may predate them, and the poll skipped an application not yet held."""
        raced = {
            sid for gen, sid, aid in self._recent if gen >= generation and aid == application_id
        }
        if not raced:
            return
        found = await self._read(sorted(raced))
        for sid in raced:
            view = found.get(sid)
            if view is None:
                index.drop(sid)
            else:
                index.put(view)

    def _evict_apps(self, keep: uuid.UUID) -> None:
        while self._app_views > self._max_app_views and len(self._apps) > 1:
            oldest = next(iter(self._apps))
            if oldest == keep:
                self._apps.move_to_end(oldest)
                continue
            self._app_views -= len(self._apps.pop(oldest))

    def _changed_since(self, generation: int, ids: set[uuid.UUID]) -> bool:
        return self._dropped_at > generation or any(
            gen >= generation and sid in ids for gen, sid, _ in self._recent
        )

    # --- changes --------------------------------------------------------------------

    def invalidate(self) -> None:
        """Poll the change log soon (the listener, and processes that made a change)."""
        self._poll_now.set()

    async def refresh(self) -> None:
        """Poll the change log now and apply it: a change committed before this call is
        visible when it returns (the process that made a change calls it before answering)."""
        async with self._polling:
            await self._poll()

    async def _poll(self) -> None:
        began = time.time()
        self._generation += 1
        generation = self._generation
        async with self._sessions() as session:
            rows = (
                await session.execute(_POLL, {"since": self._since, "cap": self._overflow + 1})
            ).all()
        if len(rows) > self._overflow:
            self._drop_everything(rows[0][0], generation)
            SUBSCRIPTIONS_LOADED.set(began)
            return
        changed: dict[uuid.UUID, uuid.UUID] = {}
        for xmin, change_id, txid, subscription_id, application_id in rows:
            self._since = xmin
            if change_id is None or change_id in self._applied:
                continue
            self._applied[change_id] = int(txid)
            changed[subscription_id] = application_id
        if self._applied:
            floor = int(rows[0][0])  # rows below the watermark are never returned again
            self._applied = {cid: t for cid, t in self._applied.items() if t >= floor}
        for sid, aid in changed.items():
            self._recent.append((generation, sid, aid))
            self._misses.pop(sid, None)
        held = [sid for sid, aid in changed.items() if sid in self._by_id or aid in self._apps]
        found = await self._read(held) if held else {}
        for sid in held:
            self._apply(sid, changed[sid], found.get(sid))
        SUBSCRIPTIONS_LOADED.set(began)

    def _drop_everything(self, xmin: str, generation: int) -> None:
        """Too many changes to apply one by one: forget every view, so each is read again
        when next used, and move the watermark on. (A transaction left open elsewhere
        holds the watermark back, and then every poll overflows again until it ends.)"""
        log.warning(
            "subscription changes overflowed: cached views dropped, reloading as used",
            more_than=self._overflow,
            views=len(self),
        )
        self._since = xmin
        self._applied.clear()
        self._dropped_at = generation
        self._by_id.clear()
        self._misses.clear()
        self._apps.clear()
        self._app_views = 0

    def _apply(
        self, subscription_id: uuid.UUID, application_id: uuid.UUID, view: SubscriptionView | None
    ) -> None:
        if subscription_id in self._by_id:
            if view is None:
                del self._by_id[subscription_id]
            else:
                self._by_id[subscription_id] = view
        index = self._apps.get(application_id)
        if index is not None:
            before = len(index)
            if view is None:
                index.drop(subscription_id)
            else:
                index.put(view)
            self._app_views += len(index) - before

    async def _poller(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poll_now.wait(), self._interval)
            self._poll_now.clear()
            try:
                await self.refresh()
            except Exception as exc:  # keep serving what we hold; the next tick retries
                log.warning("subscription changes not polled", error=str(exc))

    async def _listener(self) -> None:
        assert self._redis is not None
        backoff = 0.5
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                backoff = 0.5
                # A message published while we were disconnected was lost: poll once.
                self.invalidate()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":  # the server's confirmation
                        self.listening.set()
                    else:
                        self.invalidate()
            except (RedisError, OSError) as exc:
                log.warning("subscription change listener down", error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
