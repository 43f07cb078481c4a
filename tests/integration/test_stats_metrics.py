"""GET /status/stats on a known set of attempts, and /metrics series that move with traffic.

The module has its own database and topics, so the window holds exactly the rows below.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import make_engine, make_sessionmaker
from shared.kafka import make_producer
from shared.models import DeliveryAttempt, Subscription
from shared.signing import hub_signature
from shared.topics import Topics
from tests.support.broker import IngestServer, running_ingest
from tests.support.metrics import sample, wait_metric
from tests.support.procs import ServiceProcess, free_port
from tests.support.stack import IsolatedStack
from tests.support.targets import TargetServer

SUB_A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
SUB_B = uuid.UUID("00000000-0000-4000-8000-00000000000b")


@pytest.fixture(scope="module")
def ingest(
    module_stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IngestServer]:
    with running_ingest(module_stack, tmp_path_factory.mktemp("stats")) as server:
        yield server


@pytest.fixture
async def sengine(module_stack: IsolatedStack) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(module_stack.settings(), pool_size=1)
    yield engine
    await engine.dispose()


def _row(
    sub: uuid.UUID,
    delivery: uuid.UUID,
    attempt: int,
    status: str,
    at: datetime,
    latency: float = 0.0,
    trigger: str = "ingest",
) -> dict[str, object]:
    return {
        "id": uuid.uuid4(),
        "created_at": at,
        "delivery_id": delivery,
        "event_id": uuid.uuid4(),
        "subscription_id": sub,
        "target_url": "https://example.test/hook",
        "event_type": "t",
        "attempt_number": attempt,
        "status_code": 200 if status == "SUCCESS" else 500,
        "status": status,
        "duration_ms": 5,
        "first_received_at": at - timedelta(seconds=latency),
        "trigger": trigger,
    }


async def _load_known_attempts(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    t = now - timedelta(minutes=10)
    d1, d2, d3, d4, d5, d6, old = (uuid.uuid4() for _ in range(7))
    rows = [
        _row(SUB_A, d1, 1, "SUCCESS", t, latency=1.0),
        _row(SUB_A, d2, 1, "FAILED_ATTEMPT", t),
        _row(SUB_A, d2, 2, "SUCCESS", t, latency=3.0),
        *(_row(SUB_A, d3, n, "FAILED_ATTEMPT", t) for n in (1, 2, 3)),
        _row(SUB_A, d3, 4, "FAILURE", t),
        _row(SUB_B, d4, 1, "SUCCESS", t, latency=2.0),
        _row(SUB_B, d5, 1, "FAILED_ATTEMPT", t),
        # A replay of an old event: it counts as a delivery, not in the latency.
        _row(SUB_B, d6, 1, "SUCCESS", t, latency=50_000.0, trigger="replay"),
        # Outside the one-hour window: must not count.
        _row(SUB_B, old, 1, "FAILURE", now - timedelta(hours=2)),
    ]
    async with make_sessionmaker(engine).begin() as session:
        await session.execute(insert(DeliveryAttempt), rows)


async def test_stats_on_a_known_set_of_attempts(
    ingest: IngestServer, module_stack: IsolatedStack, sengine: AsyncEngine
) -> None:
    await _load_known_attempts(sengine)
    async with httpx.AsyncClient(base_url=ingest.url, headers=ingest.auth, timeout=10) as c:
        # top=7: a cache key nobody computed yet (ingest pre-computes window=1h, top=10
        # at start-up for the dashboard, before these rows existed).
        r = await c.get("/status/stats", params={"window": "1h", "top": 7})
        assert r.status_code == 200, r.text
        stats = r.json()
        assert (
            await c.get("/status/stats", headers={"Authorization": "Bearer nope"})
        ).status_code == 401
        assert (await c.get("/status/stats", params={"window": "soon"})).status_code == 422
        assert (await c.get("/status/stats", params={"window": "0s"})).status_code == 422

    assert stats["window_seconds"] == 3600
    assert stats["deliveries"] == {"total": 6, "SUCCESS": 4, "FAILURE": 1, "in_retry": 1}
    assert stats["attempts"] == {"total": 10, "FAILED_ATTEMPT": 5}
    assert stats["success_rate"] == 0.8
    assert stats["attempts_per_delivery"] == 1.667
    # percentile_cont over the success latencies 1, 2, 3 s (the replay's is left out).
    assert stats["latency_seconds"] == {"p50": 2.0, "p95": 2.9, "p99": 2.98}
    assert stats["top_subscriptions_by_failures"] == [
        {
            "subscription_id": str(SUB_A),
            "SUCCESS": 2,
            "FAILURE": 1,
            "FAILED_ATTEMPT": 4,
            "attempts": 7,
        },
        {
            "subscription_id": str(SUB_B),
            "SUCCESS": 2,
            "FAILURE": 0,
            "FAILED_ATTEMPT": 1,
            "attempts": 3,
        },
    ]
    # Nothing consumed these (empty) topics yet: no lag anywhere.
    topics = Topics.from_settings(module_stack.settings())
    assert stats["queue_depth"] == dict.fromkeys(
        [topics.events, topics.deliveries, *topics.retry_topics], 0
    )


async def test_queue_depth_counts_unconsumed_records(
    ingest: IngestServer, module_stack: IsolatedStack
) -> None:
    settings = module_stack.settings()
    topics = Topics.from_settings(settings)
    producer = make_producer(settings)
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait(topics.deliveries, b"{}", key=str(i).encode())
    finally:
        await producer.stop()
    async with httpx.AsyncClient(base_url=ingest.url, headers=ingest.auth, timeout=10) as c:
        # A window the cache has not seen, so the answer is fresh.
        r = await c.get("/status/stats", params={"window": "59m"})
    assert r.status_code == 200
    assert r.json()["queue_depth"][topics.deliveries] == 3


async def test_metrics_move_when_webhooks_are_ingested_and_delivered(
    ingest: IngestServer, module_stack: IsolatedStack, sengine: AsyncEngine, tmp_path: Path
) -> None:
    metrics_port = free_port()
    dispatcher = ServiceProcess(
        module_stack, "dispatcher", log_dir=tmp_path, HOOKSTREAM_METRICS_PORT=str(metrics_port)
    )
    try:
        async with TargetServer() as target:
            sub_id = uuid.uuid4()
            async with make_sessionmaker(sengine).begin() as session:
                session.add(
                    Subscription(id=sub_id, target_url=target.url(), secret_key="k", event_types=[])
                )
            worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
            before = await wait_metric(worker_metrics, "hookstream_in_flight_deliveries", 0)
            delivered_before = sample(before, "hookstream_deliveries_total", outcome="SUCCESS")
            async with httpx.AsyncClient(base_url=ingest.url, timeout=10) as c:
                ingest_before = sample(
                    (await c.get("/metrics")).text,
                    "hookstream_ingested_total",
                    outcome="accepted",
                    route="ingest",
                )
                for i in range(3):
                    body = f'{{"n": {i}}}'.encode()
                    r = await c.post(
                        f"/ingest/{sub_id}",
                        content=body,
                        headers={
                            "content-type": "application/json",
                            "x-hub-signature-256": hub_signature("k", body),
                        },
                    )
                    assert r.status_code == 202, r.text
                ingest_after = sample(
                    (await c.get("/metrics")).text,
                    "hookstream_ingested_total",
                    outcome="accepted",
                    route="ingest",
                )
            assert ingest_after == ingest_before + 3
            after = await wait_metric(
                worker_metrics,
                "hookstream_deliveries_total",
                delivered_before + 3,
                outcome="SUCCESS",
            )
            assert sample(after, "hookstream_attempt_duration_seconds_count") >= 3
    finally:
        dispatcher.stop()
