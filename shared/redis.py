"""Redis client factory. Redis is an accelerator: callers must survive it being down."""

from __future__ import annotations

from redis.asyncio import Redis

from shared.settings import Settings


def make_redis(settings: Settings) -> Redis:
    # Short timeouts: when Redis is down, ingest should skip dedupe within ~0.5 s, not hang.
    return Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        health_check_interval=10,
    )
