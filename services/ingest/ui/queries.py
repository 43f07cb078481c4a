"""Read models only the dashboard needs; everything else comes from the API's service layer.

Each query is bounded: by a time window over the (created_at, status) or
(subscription_id, created_at) index, by a page of subscriptions or applications, or by a
row limit over the (application_id, created_at) index.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.breaker import BreakerState, breaker_key, target_of
from shared.logging import get_logger
from shared.models import Application, AttemptStatus, DeliveryAttempt, Subscription

log = get_logger("ingest.ui")

# The health column and the overview chart look at the last hour: recent enough to show a
# target that broke this morning as broken, and the overview page's cost is bounded by it.
HEALTH_WINDOW = timedelta(hours=1)
# Targets whose breakers one overview asks Redis about (one pipelined round trip).
MAX_BREAKER_TARGETS = 5000
MAX_ATTENTION_ROWS = 50


async def attempts_per_minute(
    session: AsyncSession, since: datetime
) -> list[tuple[datetime, str, int]]:
    """``(minute, status, attempts)`` from ``since`` on, one row per non-empty pair."""
    minute = func.date_trunc("minute", DeliveryAttempt.created_at)
    rows = await session.execute(
        select(minute, DeliveryAttempt.status, func.count())
        .where(DeliveryAttempt.created_at >= since)
        .group_by(minute, DeliveryAttempt.status)
    )
    return [(m, s, int(n)) for m, s, n in rows.all()]


@dataclass(frozen=True, slots=True)
class Health:
    attempts: int
    succeeded: int
    last_attempt_at: datetime | None

    @property
    def success_rate(self) -> float | None:
        return self.succeeded / self.attempts if self.attempts else None


async def subscription_health(
    session: AsyncSession, ids: Sequence[uuid.UUID], since: datetime
) -> dict[uuid.UUID, Health]:
    """Attempts and successful attempts since ``since`` for each of ``ids`` (a page)."""
    if not ids:
        return {}
    a = DeliveryAttempt
    rows = await session.execute(
        select(
            a.subscription_id,
            func.count(),
            func.count().filter(a.status == AttemptStatus.SUCCESS.value),
            func.max(a.created_at),
        )
        .where(a.subscription_id.in_(ids), a.created_at >= since)
        .group_by(a.subscription_id)
    )
    return {sid: Health(int(n), int(ok), last) for sid, n, ok, last in rows.all()}


async def count_subscriptions(session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(Subscription))).scalar_one())


async def subscription_counts(
    session: AsyncSession, application_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, int]:
    """How many subscriptions (active or not) each of ``application_ids`` (a page) has."""
    if not application_ids:
        return {}
    rows = await session.execute(
        select(Subscription.application_id, func.count())
        .where(Subscription.application_id.in_(application_ids))
        .group_by(Subscription.application_id)
    )
    return {app_id: int(n) for app_id, n in rows.all()}


async def applications_by_id(
    session: AsyncSession, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Application]:
    """The applications of a page of subscriptions, deleted ones included (the page says so)."""
    if not ids:
        return {}
    rows = await session.execute(select(Application).where(Application.id.in_(ids)))
    return {app.id: app for app in rows.scalars().all()}


async def application_attempts(
    session: AsyncSession, application_id: uuid.UUID, limit: int
) -> Sequence[DeliveryAttempt]:
    """The latest ``limit`` attempts of one application's deliveries, newest first."""
    query = (
        select(DeliveryAttempt)
        .where(DeliveryAttempt.application_id == application_id)
        .order_by(DeliveryAttempt.created_at.desc(), DeliveryAttempt.id.desc())
        .limit(limit)
    )
    return (await session.execute(query)).scalars().all()


async def deactivated_subscriptions(session: AsyncSession) -> Sequence[Subscription]:
    """Inactive subscriptions, most recently changed first (auto-deactivated ones say why)."""
    query = (
        select(Subscription)
        .where(Subscription.is_active.is_(False))
        .order_by(Subscription.updated_at.desc())
        .limit(MAX_ATTENTION_ROWS)
    )
    return (await session.execute(query)).scalars().all()


@dataclass(frozen=True, slots=True)
class TrippedBreaker:
    target: str
    state: BreakerState
    opened_at: datetime
    subscription_ids: list[uuid.UUID]


async def tripped_breakers(
    session: AsyncSession, redis: Redis, topic_prefix: str
) -> list[TrippedBreaker] | None:
    """Breakers that are not closed, for the targets of active subscriptions; None when
    Redis does not answer (it is an accelerator: the page shows the rest).

    Asks for the known targets' keys rather than SCANning: the keyspace also holds every
    idempotency key, and a SCAN walks all of them.
    """
    rows = await session.execute(
        select(Subscription.id, Subscription.target_url)
        .where(Subscription.is_active.is_(True))
        .limit(MAX_BREAKER_TARGETS * 4)
    )
    by_target: dict[str, list[uuid.UUID]] = {}
    for sub_id, url in rows.all():
        by_target.setdefault(target_of(url), []).append(sub_id)
    targets = list(by_target)[:MAX_BREAKER_TARGETS]
    if not targets:
        return []
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for target in targets:
                pipe.hmget(breaker_key(topic_prefix, target), "state", "opened_at")
            replies = await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("breaker states unavailable", error=str(exc))
        return None
    tripped = []
    for target, (state, opened_at) in zip(targets, replies, strict=True):
        if state is None or state == b"closed":
            continue
        tripped.append(
            TrippedBreaker(
                target=target,
                state=BreakerState(_text(state)),
                opened_at=datetime.fromtimestamp(float(opened_at or 0), tz=UTC),
                subscription_ids=by_target[target],
            )
        )
    return sorted(tripped, key=lambda b: b.opened_at, reverse=True)


def window_start(now: datetime, window: timedelta = HEALTH_WINDOW) -> datetime:
    """The first whole minute of the window ending at ``now``'s minute."""
    return now.replace(second=0, microsecond=0) - window + timedelta(minutes=1)


async def breaker_state(redis: Redis, topic_prefix: str, target_url: str) -> BreakerState | None:
    """The shared breaker state of one subscription's target; None when Redis is down."""
    try:
        state = await redis.hget(breaker_key(topic_prefix, target_of(target_url)), "state")
    except (RedisError, OSError):
        return None
    return BreakerState(_text(state)) if state else BreakerState.CLOSED


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
