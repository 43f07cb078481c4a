"""What Hookstream depends on goes away under load: the Kafka broker, PostgreSQL, Redis.

Each is a component of the session's private stack (never the shared one), stopped for
``OUTAGE`` seconds and started again, while the services keep running untouched: they
must heal by themselves. The checker then accounts for every 202 (see
``tests.faults.harness``).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.faults.harness import Answer, FaultRun, query
from tests.support.private_stack import Component, PrivateNamespace
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(420)]

OUTAGE = 8.0


def _count(answers: list[Answer], status: int) -> int:
    return sum(1 for a in answers if a.status == status)


async def _outage(namespace: PrivateNamespace, component: Component) -> tuple[float, float, float]:
    """Stop ``component``, keep it down for OUTAGE seconds, start it again.

    Returns (down, restarting, up) in time.monotonic(): when the process was gone, when
    the restart began, when it answered again.
    """
    private = namespace.private
    await asyncio.to_thread(private.stop, component)
    down = time.monotonic()
    try:
        await asyncio.sleep(OUTAGE)
    finally:
        restarting = time.monotonic()
        await asyncio.to_thread(private.start, component)
    return down, restarting, time.monotonic()


# This scenario found a real bug: idempotent aiokafka (0.14) producers wedge on
# OutOfOrderSequenceNumber after a broker restart (aiokafka #1017), so ingest answered 503
# and the dispatcher's partitions stopped until a process restart. shared/kafka.py now
# turns idempotence off (duplicates are allowed; losses are not).
async def test_kafka_broker_stopped_and_restarted(
    namespace: PrivateNamespace, tmp_path: Path
) -> None:
    async with FaultRun("kafka-restart", namespace, tmp_path) as run:
        await run.warm_up()
        down, restarting, up = await _outage(namespace, "kafka")
        # While there was no broker, nothing sent got a 202: ingest said 503.
        during = run.traffic.sent_between(down, restarting)
        accepted = [a for a in during if a.status == 202]
        assert not accepted, f"202 while the broker was down: {accepted[:3]}"
        assert _count(during, 503) > 0, f"no 503 while the broker was down: {during[:3]}"
        run.notes.append(
            f"broker down {restarting - down:.1f}s, restart took {up - restarting:.1f}s; "
            f"answers to requests sent while down: {_count(during, 503)} x 503, "
            f"{len(during) - _count(during, 503)} other"
        )
        took = await wait_until(
            lambda: run.traffic.accepted_count(up) > 0,
            timeout=45,
            what="ingest to answer 202 again",
            details=run.services.tails,
        )
        run.notes.append(f"ingest accepted again {took:.1f}s after the broker was up")
        took = await run.wait_delivering_since(up, "deliveries after the broker came back")
        run.notes.append(f"deliveries resumed {took:.1f}s after the broker was up")
        await run.tail(up)
        await run.finish()


async def test_postgres_stopped_and_restarted(namespace: PrivateNamespace, tmp_path: Path) -> None:
    async with FaultRun("postgres-restart", namespace, tmp_path) as run:
        await run.warm_up()
        down, restarting, up = await _outage(namespace, "postgres")
        up_at = datetime.now(UTC)
        # Ingest's hot path reads subscriptions from its cache: no database needed to
        # accept a webhook (design §1), so it kept answering 202.
        during = run.traffic.sent_between(down, restarting)
        assert _count(during, 202) > 0, f"no 202 while PostgreSQL was down: {during[:3]}"
        run.notes.append(
            f"PostgreSQL down {restarting - down:.1f}s; answers while down: "
            f"{_count(during, 202)} x 202, {_count(during, 503)} x 503"
        )

        async def rows_again() -> bool:
            rows = await query(
                namespace,
                "SELECT count(*) AS n FROM delivery_attempts WHERE created_at >= $1",
                up_at,
            )
            return int(rows[0]["n"]) > 0

        took = await wait_until(
            rows_again,
            timeout=90,
            what="attempt rows written after the restart",
            every=0.5,
            details=run.services.tails,
        )
        run.notes.append(f"attempt rows written again {took:.1f}s after PostgreSQL was up")
        await run.tail(up)
        await run.finish()


async def test_redis_stopped_for_a_while(namespace: PrivateNamespace, tmp_path: Path) -> None:
    async with FaultRun("redis-outage", namespace, tmp_path) as run:
        await run.warm_up()
        down, restarting, up = await _outage(namespace, "redis")
        # Redis is an accelerator (design §8): ingest and delivery go on without it.
        during = run.traffic.sent_between(down, restarting)
        assert _count(during, 202) > 0, f"no 202 while Redis was down: {during[:3]}"
        delivered_while_down = {
            i
            for i, hits in run.targets.hits.items()
            if any(200 <= h.status < 300 and down <= h.at <= restarting for h in hits)
        }
        assert delivered_while_down, "nothing was delivered while Redis was down"
        run.notes.append(
            f"Redis down {restarting - down:.1f}s; {_count(during, 202)} x 202 and "
            f"{len(delivered_while_down)} deliveries meanwhile"
        )
        await run.tail(up)
        await run.finish()
