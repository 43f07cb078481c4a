"""Hookstream's own processes fail under load: a dispatcher is SIGKILLed or frozen past its
session timeout (a zombie member), the retry scheduler is SIGKILLed in a retry storm.

Every scenario runs the whole system on a private stack under a steady load (see
``tests.faults.harness``) and ends with the checker: no promised delivery lost, duplicates
counted, every process still running (but the one killed and restarted) and stopping
cleanly.
"""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.topics import Topics
from tests.faults.harness import SESSION_TIMEOUT, FaultRun, assignments, query
from tests.support.private_stack import PrivateNamespace
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(420)]

# How long a killed process stays down before it is started again.
DOWNTIME = 2.0
# Target failures last at least this long in the retry storm, and the scheduler is killed
# once this many records wait on the retry tiers.
STORM = 8.0
STORM_BACKLOG = 300


async def test_dispatcher_sigkill_mid_flight_then_restart(
    namespace: PrivateNamespace, tmp_path: Path
) -> None:
    async with FaultRun("dispatcher-sigkill", namespace, tmp_path) as run:
        await run.warm_up()
        # Mid-flight: a target is holding a request of the victim's right now.
        await wait_until(lambda: run.targets.in_flight > 0, timeout=10, what="a request in flight")
        victim = run.services.dispatchers[0]
        run.services.kill(victim)
        await asyncio.sleep(DOWNTIME)
        run.services.start_dispatcher()
        restarted = time.monotonic()
        # The dead member's session has to expire before the new one gets its partitions.
        took = await wait_until(
            run.services.dispatchers_cover_all,
            timeout=60,
            what="the restarted dispatcher to hold every partition",
            details=run.services.tails,
        )
        await run.wait_delivering_since(restarted, "deliveries after the restart")
        run.notes.append(f"restarted dispatcher held every partition {took:.1f}s after start")
        await run.tail(restarted)
        await run.finish()


async def test_dispatcher_frozen_past_its_session_timeout_is_a_zombie_that_recovers(
    namespace: PrivateNamespace, tmp_path: Path
) -> None:
    async with FaultRun("dispatcher-sigstop", namespace, tmp_path, dispatchers=2) as run:
        await run.warm_up()
        zombie, survivor = run.services.dispatchers
        survivor_before = len(assignments(survivor))
        zombie_before = len(assignments(zombie))
        frozen_at = time.monotonic()
        zombie.signal(signal.SIGSTOP)
        try:
            # The coordinator drops the silent member after its session timeout and the
            # survivor takes every partition, while the zombie is still frozen.
            took = await wait_until(
                lambda: (
                    len(assignments(survivor)) > survivor_before
                    and len(assignments(survivor)[-1]) == run.services.dispatch_partitions
                ),
                timeout=60,
                what="the survivor to take over every partition",
                details=run.services.tails,
            )
            run.notes.append(f"survivor held every partition {took:.1f}s after SIGSTOP")
            await run.wait_delivering_since(
                time.monotonic(), "deliveries through the survivor", timeout=30
            )
            # Frozen well past the session timeout, whatever the takeover took.
            await asyncio.sleep(max(0.0, frozen_at + SESSION_TIMEOUT + 3 - time.monotonic()))
        finally:
            zombie.signal(signal.SIGCONT)
        resumed = time.monotonic()
        # The zombie learns it was evicted, rejoins, and the two share the work again.
        took = await wait_until(
            lambda: (
                len(assignments(zombie)) > zombie_before and run.services.dispatchers_cover_all()
            ),
            timeout=60,
            what="the zombie to rejoin and the group to share every partition",
            details=run.services.tails,
        )
        run.notes.append(
            f"frozen {resumed - frozen_at:.1f}s; after SIGCONT the group shared the "
            f"partitions again in {took:.1f}s"
        )
        await run.tail(resumed)
        await run.finish()
    # Every target answers in milliseconds: a timeout here can only be the freeze's, and
    # it must not be recorded against the target (services/dispatcher/stalls.py).
    # Nor may the freeze open a live target's breaker (the gate once hid successes from
    # it): no delivery ends in FAILURE for want of a closed breaker.
    (counts,) = await query(
        namespace,
        "SELECT count(*) FILTER (WHERE error_details LIKE 'timeout after%cut short%') AS cut, "
        "count(*) FILTER (WHERE error_details LIKE 'timeout after%' "
        "AND error_details NOT LIKE '%cut short%') AS blamed, "
        "count(*) FILTER (WHERE status = 'FAILURE' AND error_details LIKE 'circuit open%') "
        "AS broken "
        "FROM delivery_attempts",
    )
    print(
        f"  {counts['cut']} attempts cut short by the freeze were sent again; "
        f"{counts['blamed']} timeouts blamed on a target; "
        f"{counts['broken']} deliveries ended by an open breaker"
    )
    assert counts["blamed"] == 0
    assert counts["broken"] == 0


async def _retried_successes_since(namespace: PrivateNamespace, since: datetime) -> int:
    rows = await query(
        namespace,
        "SELECT count(*) AS n FROM delivery_attempts "
        "WHERE status = 'SUCCESS' AND attempt_number >= 2 AND created_at >= $1",
        since,
    )
    return int(rows[0]["n"])


class RetryBacklog:
    """How many records the retry tiers hold: failed attempts and, once a target's circuit
    breaker is open, jobs deferred to a tier without an attempt."""

    def __init__(self, namespace: PrivateNamespace) -> None:
        self.settings = namespace.settings()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False
        )
        self.partitions = [
            TopicPartition(topic, p)
            for topic in Topics.from_settings(self.settings).retry_topics
            for p in range(self.settings.retry_partitions)
        ]

    async def __aenter__(self) -> RetryBacklog:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def total(self) -> int:
        ends = await self.consumer.end_offsets(self.partitions)
        return sum(ends.values())


async def test_retry_scheduler_sigkill_during_a_retry_storm_then_restart(
    namespace: PrivateNamespace, tmp_path: Path
) -> None:
    async with FaultRun("retry-scheduler-sigkill", namespace, tmp_path) as run:
        await run.warm_up()
        storm_at = time.monotonic()
        try:
            async with RetryBacklog(namespace) as backlog:
                baseline = await backlog.total()
                storm_at = time.monotonic()
                run.targets.storm = True

                # A storm: every target answers 500, jobs pile up on the retry tiers.
                async def storming() -> bool:
                    return await backlog.total() - baseline >= STORM_BACKLOG

                await wait_until(
                    storming, timeout=60, what=f"{STORM_BACKLOG} retries queued", every=0.5
                )
            run.services.kill(run.services.scheduler)  # type: ignore[arg-type]
            await asyncio.sleep(DOWNTIME)
            run.services.start_scheduler()
            took = await wait_until(
                run.services.scheduler_ready,
                timeout=60,
                what="the restarted scheduler to hold its partitions",
                details=run.services.tails,
            )
            run.notes.append(f"restarted scheduler held its partitions {took:.1f}s after start")
            await asyncio.sleep(max(0.0, storm_at + STORM - time.monotonic()))
        finally:
            run.targets.storm = False
        calm, calm_at = time.monotonic(), datetime.now(UTC)
        run.notes.append(f"storm lasted {calm - storm_at:.1f}s")

        # Retries parked on the tiers come back through the new scheduler and succeed
        # (the old one died seconds before the storm ended).
        async def retries_succeed() -> bool:
            return await _retried_successes_since(namespace, calm_at) > 0

        await wait_until(retries_succeed, timeout=60, what="retried deliveries to succeed")
        await run.tail(calm)
        await run.finish()
