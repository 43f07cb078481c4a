"""Database engine and sessions. Built by a service's resource factory, never at import."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from shared import secretbox
from shared.settings import Settings


def make_engine(settings: Settings, *, pool_size: int = 10) -> AsyncEngine:
    # Every process that reads or writes subscriptions builds its engine here, so this is
    # where its keyring for the secrets' column goes in place; no key and no explicit
    # permission for plaintext stops the process here, before it serves anything.
    secretbox.install(settings)
    return create_async_engine(
        settings.database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        # asyncpg's statement cache is per connection; 500 statements covers every query
        # the services issue with room to spare.
        connect_args={"statement_cache_size": 500, "command_timeout": 30},
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def asyncpg_dsn(settings: Settings) -> str:
    """The database URL in the form asyncpg.connect() takes (for COPY on the hot path)."""
    return settings.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
