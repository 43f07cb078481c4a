"""The SSRF guard end to end, with HOOKSTREAM_ALLOW_PRIVATE_TARGETS off.

The targets are real servers on loopback, so a request that slipped through would be
seen; every one must be refused before a connection is made, end as FAILURE with a clear
error and a dead letter, and never be retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from shared.records import DeliveryJob
from tests.support.dispatch import DispatchWorld
from tests.support.procs import ServiceProcess, running_service
from tests.support.stack import IsolatedStack
from tests.support.targets import TargetServer

# Every test runs against the module's dispatcher process (see conftest.py).
pytestmark = pytest.mark.usefixtures("dispatcher")


@pytest.fixture(scope="module")
def dispatcher(
    module_stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    with running_service(
        module_stack,
        "dispatcher",
        tmp_path_factory.mktemp("dispatcher"),
        HOOKSTREAM_ALLOW_PRIVATE_TARGETS="false",
    ) as proc:
        yield proc


async def test_private_and_loopback_targets_are_refused_end_to_end(
    world: DispatchWorld,
) -> None:
    async with TargetServer() as target:
        port = target.port
        urls = {
            f"http://127.0.0.1:{port}/literal": "loopback address 127.0.0.1",
            f"http://localhost:{port}/by-name": "localhost resolves to a loopback address",
            f"http://[::ffff:127.0.0.1]:{port}/mapped": "IPv4-mapped loopback",
            f"http://127.0.0.2:{port}/other-loopback": "loopback address 127.0.0.2",
            f"ftp://127.0.0.1:{port}/scheme": "scheme 'ftp' not allowed",
        }
        jobs: dict[str, DeliveryJob] = {}
        for url in urls:
            sub = await world.add_subscription(url, secret="s")
            job = DeliveryJob.for_event(world.event("order.created", b"{}"), sub)
            jobs[url] = job
            await world.produce_job(job)

        for url, why in urls.items():
            (row,) = await world.wait_attempts("delivery_id = :d", d=jobs[url].delivery_id)
            assert row["status"] == "FAILURE", url
            assert row["status_code"] is None
            assert row["error_details"].startswith("blocked target (SSRF guard): "), row
            assert why in row["error_details"], row["error_details"]
            assert row["attempt_number"] == 1

        ids = {j.delivery_id for j in jobs.values()}
        dead = await world.read_topic(
            world.topics.dlq, lambda j: j.delivery_id in ids, count=len(ids)
        )
        assert {j.delivery_id for j in dead} == ids
        assert all((j.last_error or "").startswith("blocked target") for j in dead)
        for topic in world.topics.retry_topics:
            retried = {j.delivery_id for j in await world.everything_in(topic)}
            assert not retried & ids
        # Nothing reached the target, by any route.
        await asyncio.sleep(1.0)
        assert target.received() == []
