"""Each real component, through the project's own code: PostgreSQL, Redis, Kafka."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import TopicPartition
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import __version__
from shared.db import make_sessionmaker
from shared.kafka import make_consumer, make_producer
from shared.models import Subscription
from shared.records import EventRecord
from shared.redis import make_redis
from shared.settings import Settings
from shared.topics import Topics, ensure_topics


async def test_postgres_round_trip_through_models(engine: AsyncEngine) -> None:
    sessions = make_sessionmaker(engine)
    sub_id = uuid.uuid4()
    async with sessions.begin() as session:
        session.add(
            Subscription(
                id=sub_id,
                target_url="https://example.test/hook",
                secret_key="s",
                event_types=["a.b"],
            )
        )
    async with sessions() as session:
        sub = (
            await session.execute(select(Subscription).where(Subscription.id == sub_id))
        ).scalar_one()
    assert sub.event_types == ["a.b"]
    assert sub.is_active is True
    assert sub.created_at.tzinfo is not None


async def test_migration_partitions_attempts_and_events_by_time(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT parent.relname, count(*) FROM pg_inherits "
                    "JOIN pg_class parent ON parent.oid = inhparent "
                    "WHERE parent.relname IN ('events', 'delivery_attempts') "
                    "GROUP BY parent.relname"
                )
            )
        ).all()
        # A row stamped now lands in a range partition, not the default one.
        # Other tests share this database: find our row by its id.
        row_id = uuid.uuid4()
        await conn.execute(
            text(
                "INSERT INTO delivery_attempts (id, created_at, delivery_id, event_id, "
                "subscription_id, target_url, event_type, attempt_number, status) VALUES "
                "(:id, now(), gen_random_uuid(), gen_random_uuid(), "
                "gen_random_uuid(), 'http://x', 't', 1, 'SUCCESS')"
            ),
            {"id": row_id},
        )
        where = (
            await conn.execute(
                text("SELECT tableoid::regclass::text FROM delivery_attempts WHERE id = :id"),
                {"id": row_id},
            )
        ).scalar_one()
    counts = dict(rows)
    assert counts["events"] > 2
    assert counts["delivery_attempts"] > 2
    assert where.startswith("delivery_attempts_p")


async def test_redis_round_trip(settings: Settings) -> None:
    redis = make_redis(settings)
    key = f"hstest:{uuid.uuid4()}"
    try:
        assert await redis.set(key, b"first", nx=True, ex=60) is True
        assert await redis.set(key, b"second", nx=True, ex=60) is None
        assert await redis.get(key) == b"first"
        assert 0 < await redis.ttl(key) <= 60
    finally:
        await redis.delete(key)
        await redis.aclose()


async def test_redis_connections_introduce_hookstream_without_a_metadata_lookup_each(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each connection's introduction (CLIENT SETINFO, which Redis 7.2 and later keep for
    CLIENT LIST) comes from the one ``DriverInfo`` the factory holds: redis-py would
    otherwise read its package metadata for every connection it opens (~0.5 ms each)."""

    def no_lookup() -> str:
        raise AssertionError("redis-py looked its version up for a connection")

    monkeypatch.setattr("redis.utils.get_lib_version", no_lookup)
    redis = make_redis(settings)
    try:
        infos = await asyncio.gather(*(redis.client_info() for _ in range(5)))
        assert len({info["id"] for info in infos}) > 1  # several connections opened
        driver = redis.connection_pool.connection_kwargs["driver_info"]
        assert driver.formatted_name == f"redis-py(hookstream_v{__version__})"
    finally:
        await redis.aclose()


async def test_kafka_acks_all_consumer_group_and_manual_commit(settings: Settings) -> None:
    topics = Topics.from_settings(settings)
    assert (await ensure_topics(settings))[topics.events] == "exists"  # idempotent
    event = EventRecord(
        event_id=uuid.uuid4(),
        event_type="t",
        received_at=datetime.now(UTC),
        content_type="application/json",
        body=b'{"exact":  "bytes"}',
        subscription_id=uuid.uuid4(),
    )
    producer = make_producer(settings)
    await producer.start()
    try:
        meta = await producer.send_and_wait(
            topics.events, event.body, key=event.key, headers=event.headers()
        )
    finally:
        await producer.stop()
    tp = TopicPartition(topics.events, meta.partition)
    group = f"{settings.topic_prefix}.components-{uuid.uuid4().hex[:6]}"

    consumer = make_consumer(settings, topics.events, group_id=group)
    await consumer.start()
    try:
        found = await _consume_until(consumer, event.event_id)
        assert found.body == event.body
        assert found.subscription_id == event.subscription_id
        await consumer.commit({tp: meta.offset + 1})
    finally:
        await consumer.stop()

    # A new member of the same group resumes after the committed offset.
    consumer = make_consumer(settings, topics.events, group_id=group)
    await consumer.start()
    try:
        await asyncio.wait_for(_wait_assigned(consumer), 15)
        assert await consumer.committed(tp) == meta.offset + 1
        assert await consumer.position(tp) == meta.offset + 1
    finally:
        await consumer.stop()


async def _wait_assigned(consumer) -> None:  # type: ignore[no-untyped-def]
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=200)


async def _consume_until(consumer, event_id: uuid.UUID) -> EventRecord:  # type: ignore[no-untyped-def]
    async def _loop() -> EventRecord:
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for r in records:
                    decoded = EventRecord.decode(r.value, r.headers)
                    if decoded.event_id == event_id:
                        return decoded

    return await asyncio.wait_for(_loop(), 30)
