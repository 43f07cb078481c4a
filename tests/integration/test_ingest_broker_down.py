"""Broker gone → 503 with Retry-After, never a 202 for a record the broker does not have.

Runs against a private, disposable Kafka (tests.support.broker.PrivateKafka) so the shared
stack's broker keeps running for everyone else.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from pathlib import Path

import httpx
import pytest

from shared.topics import Topics, ensure_topics
from tests.support.broker import TopicProbe, private_kafka, running_ingest
from tests.support.stack import IsolatedStack

pytestmark = pytest.mark.slow

PUBLISH_TIMEOUT = 2.0


def _sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def test_broker_stopped_gives_503_then_recovers(stack: IsolatedStack, tmp_path: Path) -> None:
    with private_kafka(tmp_path / "kafka-local") as kafka:
        settings = stack.settings(kafka_bootstrap=kafka.bootstrap)
        await ensure_topics(settings)
        events_topic = Topics.from_settings(settings).events
        with running_ingest(
            stack,
            tmp_path,
            HOOKSTREAM_KAFKA_BOOTSTRAP=kafka.bootstrap,
            HOOKSTREAM_PUBLISH_TIMEOUT=str(PUBLISH_TIMEOUT),
        ) as ingest:
            async with httpx.AsyncClient(base_url=ingest.url, timeout=30) as client:
                r = await client.post(
                    "/subscriptions/",
                    json={"target_url": "https://e.com/", "secret_key": "k"},
                    headers=ingest.auth,
                )
                sub_id = r.json()["id"]
                body = b'{"n": 1}'
                headers = {"x-hub-signature-256": _sign(body, "k")}
                first = await client.post(f"/ingest/{sub_id}", content=body, headers=headers)
                assert first.status_code == 202, first.text

                await asyncio.to_thread(kafka.down)
                started = time.monotonic()
                second = await client.post(f"/ingest/{sub_id}", content=body, headers=headers)
                took = time.monotonic() - started
                assert second.status_code == 503, second.text
                assert int(second.headers["Retry-After"]) >= 1
                assert "retry" in second.json()["detail"]
                assert took < PUBLISH_TIMEOUT + 1.5
                ready = await client.get("/ready")
                assert ready.status_code == 503
                assert ready.json()["checks"]["kafka"].startswith("down")

                # The broker comes back: ingest publishes again without a restart.
                await asyncio.to_thread(kafka.up)
                deadline = time.monotonic() + 60
                while True:
                    third = await client.post(f"/ingest/{sub_id}", content=body, headers=headers)
                    if third.status_code == 202 or time.monotonic() > deadline:
                        break
                    assert third.status_code == 503, third.text
                    await asyncio.sleep(0.5)
                assert third.status_code == 202, third.text
                event_ids = {first.json()["event_id"], third.json()["event_id"]}
            log = ingest.log()
        assert "broker ack timed out" in log or "publish failed" in log
        assert "Traceback" not in log

        # Both accepted records are on the topic. The 503 one may be there too (its send
        # could complete after the deadline: at-least-once allows a duplicate, not a loss).
        async with TopicProbe(kafka.bootstrap, events_topic) as probe:
            await probe.mark_beginning()
            found = {dict(r.headers)["event_id"].decode() for r in await probe.new_records()}
        assert event_ids <= found
