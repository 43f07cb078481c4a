"""Fixtures shared by integration modules; a module that needs another order (e.g. its
dispatcher started first) defines its own ``world``, which takes precedence."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.dispatch import DispatchWorld
from tests.support.stack import IsolatedStack


@pytest.fixture
async def world(module_stack: IsolatedStack) -> AsyncIterator[DispatchWorld]:
    """Subscriptions, topics and attempt rows on the module's own database and prefix."""
    async with DispatchWorld(module_stack.settings()) as w:
        yield w
