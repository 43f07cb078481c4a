"""Fetch batching that adapts to load (issue 19, shared/kafka.py FetchPacing) against a
real broker and the aiokafka version we pin: the fetcher still holds the two settings
pacing changes, under the names pacing uses, and records keep flowing in both modes."""

from __future__ import annotations

import asyncio
import time
import uuid

from aiokafka import AIOKafkaConsumer

from shared.kafka import (
    BUSY_FETCH_MIN_BYTES,
    IDLE_FETCH_WAIT_MS,
    PACING_WINDOW_S,
    FetchPacing,
    make_consumer,
    make_producer,
)
from shared.settings import Settings
from shared.topics import Topics, ensure_topics

WAIT_MS = 50


async def _read_one(consumer: AIOKafkaConsumer, value: bytes, timeout: float) -> float:
    """Seconds until ``value`` is read."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            if any(r.value == value for records in batches.values() for r in records):
                return time.monotonic() - started


async def test_pacing_sets_the_fetchers_settings_and_records_still_flow(
    settings: Settings,
) -> None:
    topics = Topics.from_settings(settings)
    await ensure_topics(settings)
    consumer = make_consumer(
        settings, topics.events, group_id=f"{settings.topic_prefix}.pacing-{uuid.uuid4().hex[:6]}"
    )
    producer = make_producer(settings)
    await consumer.start()
    await producer.start()
    try:
        fetcher = consumer._fetcher
        # The names pacing writes are the live ones: they hold what make_consumer set.
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (1, IDLE_FETCH_WAIT_MS)
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=200)
        await consumer.seek_to_end()

        pacing = FetchPacing(consumer, WAIT_MS)
        await asyncio.sleep(PACING_WINDOW_S)
        pacing.fetched(10_000)  # a steady flow
        assert pacing.busy
        assert not pacing.off
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (
            BUSY_FETCH_MIN_BYTES,
            WAIT_MS,
        )
        # A lone record still arrives: the broker gives up waiting for 64 KB after WAIT_MS.
        busy_value = f"busy-{uuid.uuid4()}".encode()
        await producer.send_and_wait(topics.events, busy_value)
        assert await _read_one(consumer, busy_value, 10) < 5

        await asyncio.sleep(PACING_WINDOW_S)
        pacing.fetched(1)  # the flow stopped
        assert not pacing.busy
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (1, IDLE_FETCH_WAIT_MS)
        idle_value = f"idle-{uuid.uuid4()}".encode()
        await producer.send_and_wait(topics.events, idle_value)
        assert await _read_one(consumer, idle_value, 10) < 5
    finally:
        await producer.stop()
        await consumer.stop()
