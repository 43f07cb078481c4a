"""Fixtures shared by integration modules.

A module that runs a dispatcher process defines a module-scoped ``dispatcher`` fixture
(its own settings) and uses it for every test (``pytest.mark.usefixtures``): being
module-scoped, it starts before ``world``, which then checks after each test that the
process is still running.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.broker import IngestServer, running_ingest
from tests.support.dispatch import DispatchWorld
from tests.support.procs import ServiceProcess
from tests.support.stack import IsolatedStack
from tests.support.targets import TargetServer


@pytest.fixture
async def world(
    module_stack: IsolatedStack, request: pytest.FixtureRequest
) -> AsyncIterator[DispatchWorld]:
    """Subscriptions, topics and attempt rows on the module's own database and prefix."""
    async with DispatchWorld(module_stack.settings()) as w:
        yield w
    if "dispatcher" in request.fixturenames:
        dispatcher: ServiceProcess = request.getfixturevalue("dispatcher")
        assert dispatcher.alive(), dispatcher.log()[-3000:]


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    """A recording HTTP target on 127.0.0.1."""
    async with TargetServer() as server:
        yield server


@pytest.fixture(scope="module")
def module_ingest(
    module_stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IngestServer]:
    """An ingest process on the module's stack; its log must end without a traceback."""
    with running_ingest(module_stack, tmp_path_factory.mktemp("ingest")) as server:
        yield server
    assert "Traceback" not in server.log(), server.log()[-3000:]


@pytest.fixture
async def operator(module_ingest: IngestServer) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the module's ingest holding the operator key."""
    async with httpx.AsyncClient(
        base_url=module_ingest.url, timeout=30, headers=module_ingest.auth
    ) as client:
        yield client
