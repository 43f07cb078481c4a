"""Fixtures of the fault-injection suite: one private stack per session, a fresh namespace
(database + topic prefix) on it per scenario."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.harness import REPORT_LINES
from tests.support.private_stack import Component, PrivateNamespace, PrivateStack, private_stack

COMPONENTS: tuple[Component, ...] = ("postgres", "redis", "kafka")


@pytest.fixture(scope="session")
def private() -> Iterator[PrivateStack]:
    with private_stack() as stack:
        yield stack


@pytest.fixture
def namespace(private: PrivateStack) -> Iterator[PrivateNamespace]:
    # A scenario that failed half-way may have left a component stopped.
    for component in COMPONENTS:
        if not private.running(component):
            private.start(component)
    ns = PrivateNamespace(private)
    ns.up()
    yield ns
    for component in COMPONENTS:
        if not private.running(component):
            private.start(component)
    ns.down()


@pytest.fixture(scope="session")
def cluster() -> Iterator[PrivateStack]:
    """PostgreSQL, Redis and a 3-node Kafka cluster of its own (tests/faults/test_cluster.py)."""
    with private_stack(brokers=3) as stack:
        yield stack


@pytest.fixture
def cluster_namespace(cluster: PrivateStack) -> Iterator[PrivateNamespace]:
    """A fresh namespace on the cluster; topics get 3 replicas, 2 in sync (shared.topics)."""
    cluster.heal()
    ns = PrivateNamespace(cluster)
    ns.up()
    yield ns
    # A scenario that failed half-way may have left nodes killed or stopped.
    cluster.heal()
    ns.down()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT_LINES:
        terminalreporter.section("fault-injection scenarios")
        for line in REPORT_LINES:
            terminalreporter.write_line(line)
