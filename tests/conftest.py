"""Fixtures over the real local stack (make stack-up): PostgreSQL, Redis, Kafka."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import make_engine
from shared.settings import Settings
from tests.support.stack import IsolatedStack


@pytest.fixture(scope="session")
def stack() -> Iterator[IsolatedStack]:
    isolated = IsolatedStack()
    isolated.up()
    yield isolated
    isolated.down()


@pytest.fixture
def settings(stack: IsolatedStack) -> Settings:
    return stack.settings()


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(settings, pool_size=2)
    yield engine
    await engine.dispose()
