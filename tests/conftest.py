"""Fixtures over the real local stack (make stack-up): PostgreSQL, Redis, Kafka."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import make_engine
from shared.settings import Settings
from tests.support import loopback_only
from tests.support.stack import IsolatedStack

# No DNS query leaves the machine from this process either (see the module).
loopback_only.install()


@pytest.fixture(scope="session")
def stack() -> Iterator[IsolatedStack]:
    isolated = IsolatedStack()
    isolated.up()
    yield isolated
    isolated.down()


@pytest.fixture(scope="module")
def module_stack() -> Iterator[IsolatedStack]:
    """A database and topic prefix of the module's own, for tests that count every row,
    record or lag figure and must not see other modules' traffic."""
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
