"""Kafka producer and consumer factories with the settings every service relies on."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.settings import Settings


def make_producer(settings: Settings) -> AIOKafkaProducer:
    # acks=all: a 2xx from ingest and a committed offset both mean "the broker has it".
    # Idempotence stays off: aiokafka 0.14 cannot recover an idempotent producer whose
    # batch failed while the broker was down (its sequence runs ahead of the broker's and
    # every later send fails with OutOfOrderSequenceNumber until restart, aiokafka #1017;
    # our broker-restart fault test caught it). A retried send may duplicate a record,
    # which at-least-once delivery allows (receivers dedupe on webhook-id).
    # Linger: see Settings.producer_linger_ms (0: batches grow with load by themselves).
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=settings.producer_linger_ms,
        max_batch_size=256 * 1024,
        max_request_size=max(1_048_576, settings.max_body_bytes * 2),
        request_timeout_ms=int(max(settings.publish_timeout, 5) * 1000) * 3,
    )


# The group drops a member it has not heard from for this long; a dispatcher that was
# stalled longer (services/dispatcher/stalls.py) knows its partitions have moved on.
SESSION_TIMEOUT_MS = 10_000


def make_consumer(
    settings: Settings,
    *topics: str,
    group_id: str,
    max_poll_records: int = 500,
    max_poll_interval_ms: int = 300_000,
) -> AIOKafkaConsumer:
    # Offsets are committed by hand, per partition, at the highest contiguous finished
    # offset (design §3), so auto-commit is always off.
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        max_poll_interval_ms=max_poll_interval_ms,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=3_000,
        fetch_max_wait_ms=100,
        isolation_level="read_uncommitted",
    )
