"""Redis client factory. Redis is an accelerator: callers must survive it being down."""

from __future__ import annotations

from redis import DriverInfo
from redis.asyncio import BlockingConnectionPool, Redis

from shared import __version__
from shared.settings import Settings

# A burst of requests waits up to POOL_WAIT for a free connection instead of failing:
# redis-py's default pool raises MaxConnectionsError at 100 connections, which callers
# would take for "Redis down" (ingest would then skip idempotency for that burst).
POOL_SIZE = 64
POOL_WAIT = 1.0

# Every new connection introduces itself (CLIENT SETINFO). Left to itself, redis-py builds
# that introduction per connection and looks its own version up in the installed package
# metadata each time: ~0.5 ms of the event loop per connection, 64 of them in a row when a
# pool reconnects after an outage. Built once here, and it names Hookstream in CLIENT LIST.
DRIVER = DriverInfo().add_upstream_driver("hookstream", __version__)


def make_redis(settings: Settings) -> Redis:
    # Short socket timeouts: when Redis is down, ingest should skip dedupe within ~0.5 s,
    # not hang.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=POOL_SIZE,
        timeout=POOL_WAIT,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        health_check_interval=10,
        driver_info=DRIVER,
    )
    # from_pool: closing the client closes the pool too.
    return Redis.from_pool(pool)
