"""Attempt claims on the real Redis: which copy of a retry job may make its attempt."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from redis.asyncio import Redis

from services.dispatcher.claims import AttemptClaims, claim_ttl
from shared.redis import make_redis
from shared.settings import Settings
from tests.support.procs import free_port


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = make_redis(settings)
    yield client
    await client.aclose()


@pytest.fixture
def claims(redis: Redis, settings: Settings) -> AttemptClaims:
    return AttemptClaims(redis, f"{settings.topic_prefix}-cl{secrets.token_hex(3)}", ttl=60)


async def test_the_first_copy_takes_the_attempt_and_another_copy_of_it_is_refused(
    claims: AttemptClaims,
) -> None:
    delivery = uuid.uuid4()
    assert await claims.take(delivery, "", 2, "3:100")
    assert not await claims.take(delivery, "", 2, "3:101")


async def test_the_same_record_read_again_may_attempt_again(claims: AttemptClaims) -> None:
    # After a crash or a rebalance the record is read again from the same offset: its
    # first reading may have died before recording anything.
    delivery = uuid.uuid4()
    assert await claims.take(delivery, "", 2, "3:100")
    assert await claims.take(delivery, "", 2, "3:100")


async def test_a_later_attempt_goes_and_an_earlier_copy_is_refused_after_it(
    claims: AttemptClaims,
) -> None:
    delivery = uuid.uuid4()
    assert await claims.take(delivery, "", 2, "0:7")
    assert await claims.take(delivery, "", 3, "1:9")
    assert not await claims.take(delivery, "", 2, "0:7")
    assert not await claims.take(delivery, "", 3, "0:8")


async def test_an_ended_delivery_refuses_every_copy(claims: AttemptClaims) -> None:
    delivery = uuid.uuid4()
    assert await claims.take(delivery, "", 4, "0:1")
    await claims.end(delivery, "")
    assert not await claims.take(delivery, "", 4, "0:1")
    assert not await claims.take(delivery, "", 5, "0:2")
    # Other deliveries are not touched.
    assert await claims.take(uuid.uuid4(), "", 4, "0:1")


async def test_a_claim_expires(redis: Redis, claims: AttemptClaims) -> None:
    delivery = uuid.uuid4()
    assert await claims.take(delivery, "", 2, "0:1")
    (key,) = await redis.keys(f"*:claim:{delivery}")
    assert 0 < await redis.ttl(key) <= 60


async def test_with_redis_down_every_copy_goes(settings: Settings) -> None:
    # A duplicate at worst, never a loss. The port is closed on loopback.
    down = make_redis(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}"}))
    try:
        claims = AttemptClaims(down, "hs-down", ttl=60)
        delivery = uuid.uuid4()
        assert await claims.take(delivery, "", 2, "0:1")
        assert await claims.take(delivery, "", 2, "0:2")
        await claims.end(delivery, "")  # logged, not raised
    finally:
        await down.aclose()


def test_a_claim_outlives_the_longest_wait_between_attempts() -> None:
    schedule = (timedelta(seconds=10), timedelta(hours=12), timedelta(minutes=5))
    assert claim_ttl(schedule, 0.2) == int(12 * 3600 * 1.2) + 3600
    assert claim_ttl((), 0.2) == 3600


async def test_another_run_of_an_ended_delivery_claims_its_own_attempts(
    claims: AttemptClaims,
) -> None:
    # A manual retry after the delivery ended: its retries are not copies of the first run.
    delivery = uuid.uuid4()
    assert await claims.take(delivery, "", 3, "0:1")
    await claims.end(delivery, "")
    assert await claims.take(delivery, "manual1", 2, "1:5")
    assert not await claims.take(delivery, "manual1", 2, "1:6")
    assert not await claims.take(delivery, "", 2, "1:7")
