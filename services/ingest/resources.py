"""Everything ingest connects to, built once at start-up and closed in reverse order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import Request

from services.ingest.applications.keys import KeyStore
from services.ingest.idempotency import IdempotencyStore
from services.ingest.ingestion import Ingestion
from services.ingest.login_limit import LoginLimiter
from services.ingest.publishing import Publisher
from services.ingest.stats_cache import StatsCache
from shared.db import make_engine, make_sessionmaker
from shared.kafka import make_producer
from shared.lag import LagProbe
from shared.redis import make_redis
from shared.settings import Settings
from shared.subscriptions import SubscriptionCache
from shared.topics import Topics


@dataclass(frozen=True, slots=True)
class Resources:
    settings: Settings
    topics: Topics
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis
    producer: AIOKafkaProducer
    cache: SubscriptionCache
    publisher: Publisher
    ingestion: Ingestion
    lag: LagProbe
    stats_cache: StatsCache
    keys: KeyStore
    logins: LoginLimiter


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    async with AsyncExitStack() as stack:
        topics = Topics.from_settings(settings)
        engine = make_engine(settings)
        stack.push_async_callback(engine.dispose)
        sessions = make_sessionmaker(engine)
        redis = make_redis(settings)
        stack.push_async_callback(redis.aclose)
        producer = make_producer(settings)
        await producer.start()
        stack.push_async_callback(producer.stop)
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
        publisher = Publisher(producer, timeout=settings.publish_timeout)
        lag = await LagProbe.start(settings)
        stack.push_async_callback(lag.close)
        stats_cache = StatsCache()
        stack.push_async_callback(stats_cache.close)
        keys = KeyStore(sessions)
        stack.push_async_callback(keys.close)
        yield Resources(
            settings=settings,
            topics=topics,
            engine=engine,
            sessions=sessions,
            redis=redis,
            producer=producer,
            cache=cache,
            publisher=publisher,
            ingestion=Ingestion(
                settings, topics, cache, publisher, IdempotencyStore(redis, settings)
            ),
            lag=lag,
            stats_cache=stats_cache,
            keys=keys,
            logins=LoginLimiter(redis, settings.topic_prefix),
        )


def from_request(request: Request) -> Resources:
    """The resources the lifespan put in the request state, typed."""
    res: Resources = request.state.resources
    return res
