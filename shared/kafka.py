"""Kafka producer and consumer factories with the settings every service relies on."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.settings import Settings


def make_producer(settings: Settings, *, linger_ms: int = 5) -> AIOKafkaProducer:
    # acks=all + idempotence: a 2xx from ingest and a committed offset both mean "the
    # broker has it". linger 5 ms lets concurrent ingests share a batch: at 2 cores it
    # lifts publish throughput far more than it adds to latency.
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
        max_request_size=max(1_048_576, settings.max_body_bytes * 2),
        request_timeout_ms=int(max(settings.publish_timeout, 5) * 1000) * 3,
    )


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
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
        fetch_max_wait_ms=100,
        isolation_level="read_uncommitted",
    )
