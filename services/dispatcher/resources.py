"""Everything the dispatcher connects to, built once at start-up and closed in reverse."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.dispatcher.http1 import Http1Client
from services.dispatcher.sender import make_client
from shared.db import asyncpg_dsn, make_engine, make_sessionmaker
from shared.kafka import make_consumer, make_producer
from shared.redis import make_redis
from shared.settings import Settings
from shared.subscriptions import SubscriptionCache
from shared.topics import Topics


async def _keep_session(_: asyncpg.Connection) -> None:
    return None


def group_id(settings: Settings) -> str:
    return Topics.from_settings(settings).dispatcher_group


@dataclass(frozen=True, slots=True)
class Resources:
    settings: Settings
    topics: Topics
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    # Raw asyncpg for the hot path: COPY of attempt rows, batched event inserts.
    pg: asyncpg.Pool
    redis: Redis
    producer: AIOKafkaProducer
    http: Http1Client
    cache: SubscriptionCache
    consumer: AIOKafkaConsumer


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    async with AsyncExitStack() as stack:
        engine = make_engine(settings, pool_size=2)
        stack.push_async_callback(engine.dispose)
        # Two writers (attempts, events) flush concurrently; two spare connections
        # let a flush proceed while a broken connection is being replaced; four more
        # for the ordered queues' short transactions (ordered.py).
        pg = await asyncpg.create_pool(
            asyncpg_dsn(settings),
            min_size=1,
            max_size=8,
            command_timeout=30,
            # The writers change no session state, so skip asyncpg's default reset on
            # release (a round trip of UNLISTEN/RESET ALL after every batch).
            reset=_keep_session,
        )
        stack.push_async_callback(pg.close)
        redis = make_redis(settings)
        stack.push_async_callback(redis.aclose)
        producer = make_producer(settings)
        await producer.start()
        stack.push_async_callback(producer.stop)
        http = make_client(settings)
        stack.push_async_callback(http.close)
        sessions = make_sessionmaker(engine)
        cache = SubscriptionCache(
            sessions,
            redis,
            settings.topic_prefix,
            settings.subscription_cache_ttl,
            max_ids=settings.subscription_cache_ids,
            max_app_views=settings.subscription_cache_app_views,
        )
        await cache.start()
        stack.push_async_callback(cache.stop)
        # 1,000 records a poll: one getmany feeds a third of a second at 3,000/s.
        consumer = make_consumer(settings, group_id=group_id(settings), max_poll_records=1000)
        await consumer.start()
        stack.push_async_callback(consumer.stop)  # leaves the group
        yield Resources(
            settings=settings,
            topics=Topics.from_settings(settings),
            engine=engine,
            sessions=sessions,
            pg=pg,
            redis=redis,
            producer=producer,
            http=http,
            cache=cache,
            consumer=consumer,
        )
