"""Failure-streak deactivation end to end: a real dispatcher with tiny thresholds (3 failed
deliveries in a row, no minimum duration), real PostgreSQL/Kafka/Redis and HTTP targets.

Jobs are produced at their last attempt (4, with the stack's 1s,2s,3s schedule), as the
retry scheduler would re-publish them, so each failed request is a failed delivery.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from services.ingest.schemas import SubscriptionOut
from shared.records import DeliveryJob
from tests.support.dispatch import DispatchWorld
from tests.support.procs import ServiceProcess, running_service
from tests.support.stack import IsolatedStack
from tests.support.targets import TargetServer

# Every test runs against the module's dispatcher process (see conftest.py).
pytestmark = pytest.mark.usefixtures("dispatcher")

BODY = b'{"streak": true}'
LAST_ATTEMPT = 4


@pytest.fixture(scope="module")
def dispatcher(
    module_stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    with running_service(
        module_stack,
        "dispatcher",
        tmp_path_factory.mktemp("dispatcher"),
        HOOKSTREAM_DELIVERY_TIMEOUT="2.5",
        HOOKSTREAM_SUBSCRIPTION_CACHE_TTL="1",
        HOOKSTREAM_DEACTIVATE_AFTER_FAILURES="3",
        HOOKSTREAM_DEACTIVATE_AFTER="0s",
    ) as proc:
        yield proc


async def deliver(world: DispatchWorld, sub: uuid.UUID, status: str) -> None:
    """One delivery at its last attempt; returns once its row is written with ``status``."""
    event = world.event(f"streak.{uuid.uuid4().hex[:8]}", BODY, subscription_id=sub)
    job = dataclasses.replace(
        DeliveryJob.for_event(event, sub),
        attempt=LAST_ATTEMPT,
        due_at=datetime.now(UTC),
        last_error="HTTP 503",
    )
    await world.produce_job(job)
    (row,) = await world.wait_attempts("delivery_id = :d", d=job.delivery_id)
    assert row["status"] == status, row


async def streak_becomes(world: DispatchWorld, sub: uuid.UUID, count: int) -> dict[str, object]:
    """The streak is written just after the rows' COPY: wait for it."""
    async with asyncio.timeout(10):
        while True:
            row = await world.subscription(sub)
            if row["failure_streak"] == count:
                return row
            await asyncio.sleep(0.05)


async def test_failing_every_delivery_deactivates_with_a_reason(
    world: DispatchWorld, target: TargetServer
) -> None:
    target.reply("/dead", 503)
    sub = await world.add_subscription(target.url("/dead"))
    for n in (1, 2):
        await deliver(world, sub, "FAILURE")
        row = await streak_becomes(world, sub, n)
        assert row["is_active"]
        assert row["failing_since"] is not None
    await deliver(world, sub, "FAILURE")
    row = await streak_becomes(world, sub, 3)
    assert row["is_active"] is False
    reason = row["deactivated_reason"]
    assert isinstance(reason, str)
    assert reason.startswith("failed every delivery since ")
    assert reason.endswith("(3 in a row)")

    shown = SubscriptionOut.model_validate(row).model_dump(mode="json")
    assert shown["is_active"] is False
    assert shown["deactivated_reason"] == reason

    # The dispatcher's cache heard of it: the next job is not sent.
    await deliver(world, sub, "FAILURE")
    assert len(target.received("/dead")) == 3
    assert (await world.subscription(sub))["failure_streak"] == 3  # not counted


async def test_a_success_resets_the_streak(world: DispatchWorld, target: TargetServer) -> None:
    target.reply("/flaky", 503)
    sub = await world.add_subscription(target.url("/flaky"))
    await deliver(world, sub, "FAILURE")
    await deliver(world, sub, "FAILURE")
    await streak_becomes(world, sub, 2)

    target.reply("/flaky", 200)
    await deliver(world, sub, "SUCCESS")
    row = await streak_becomes(world, sub, 0)
    assert row["failing_since"] is None

    target.reply("/flaky", 503)
    await deliver(world, sub, "FAILURE")
    await deliver(world, sub, "FAILURE")
    row = await streak_becomes(world, sub, 2)
    assert row["is_active"], "two failures after a success are not three in a row"
    assert row["deactivated_reason"] is None
