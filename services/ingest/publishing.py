"""Publishing to the broker: a 2xx from ingest means the broker acknowledged (acks=all).

``publish`` bounds the whole send (metadata wait, buffer space, broker ack) by
``settings.publish_timeout``; past it, or on any Kafka error, the caller gets
``ServiceUnavailable`` (503 + Retry-After) and never a 202 for a record that may not be
stored. A record whose ack came too late may still land on the topic: the sender's retry
then makes a duplicate, which at-least-once delivery allows (receivers dedupe on
``webhook-id``); a loss it does not allow.
"""

from __future__ import annotations

import asyncio
import math

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import Counter

from services.ingest.errors import ServiceUnavailable
from shared import tracing
from shared.logging import get_logger
from shared.metrics import PUBLISHED
from shared.records import DeliveryJob, EventRecord

log = get_logger("ingest.publishing")

_DEFAULT_PARTITIONER = DefaultPartitioner()
# Keys are subscription ids; past this many, start over rather than grow without bound.
_MAX_REMEMBERED_KEYS = 100_000


class Publisher:
    def __init__(self, producer: AIOKafkaProducer, *, timeout: float) -> None:
        self._producer = producer
        self._timeout = timeout
        self._retry_after = max(1, math.ceil(timeout))
        self._published: dict[str, Counter] = {}
        self._partitions: dict[tuple[str, bytes], tuple[int, int]] = {}

    async def publish_event(self, topic: str, record: EventRecord) -> None:
        key = record.key
        # Keyed by subscription or application id: a small, stable set of keys.
        partition = self._partition(topic, key)
        if tracing.enabled:
            attrs = {"hookstream.event_id": str(record.event_id)}
            await self._publish_traced(topic, record.body, key, record.headers(), partition, attrs)
            return
        await self._publish(topic, record.body, key, record.headers(), partition)

    async def publish_job(self, topic: str, job: DeliveryJob) -> None:
        key = job.key
        partition = self._partition(topic, key)
        if tracing.enabled:
            attrs = {"hookstream.delivery_id": str(job.delivery_id)}
            await self._publish_traced(topic, job.body, key, job.headers(), partition, attrs)
            return
        await self._publish(topic, job.body, key, job.headers(), partition)

    async def _publish_traced(
        self,
        topic: str,
        value: bytes,
        key: bytes,
        headers: list[tuple[str, bytes]],
        partition: int | None,
        attributes: dict[str, str],
    ) -> None:
        """A producer span, child of the request's, whose context the record carries."""
        span = tracing.start_producer(topic, attributes=attributes)
        try:
            await self._publish(
                topic, value, key, tracing.replace_trace_headers(headers, span), partition
            )
        except BaseException as exc:
            tracing.end(span, exc)
            raise
        tracing.end(span)

    def _partition(self, topic: str, key: bytes) -> int | None:
        """The partition aiokafka's default partitioner would choose, remembered per key.

        Its murmur2 is pure Python: ~5 µs a record, for an answer that only changes when
        the topic's partition count does. None (let aiokafka decide) until metadata is known.
        """
        partitions = self._producer.client.cluster.partitions_for_topic(topic)
        if not partitions:
            return None
        count = len(partitions)
        cached = self._partitions.get((topic, key))
        if cached is not None and cached[0] == count:
            return cached[1]
        if len(self._partitions) >= _MAX_REMEMBERED_KEYS:
            self._partitions.clear()
        partition: int = _DEFAULT_PARTITIONER(key, sorted(partitions), [])
        self._partitions[topic, key] = (count, partition)
        return partition

    async def _publish(
        self,
        topic: str,
        value: bytes,
        key: bytes,
        headers: list[tuple[str, bytes]],
        partition: int | None,
    ) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                ack = await self._producer.send(
                    topic, value, key=key, headers=headers, partition=partition
                )
                await ack
        except TimeoutError:
            log.warning("broker ack timed out", topic=topic, timeout_s=self._timeout)
            raise ServiceUnavailable(
                "the broker did not acknowledge in time; retry later", self._retry_after
            ) from None
        except KafkaError as exc:
            log.warning("publish failed", topic=topic, error=f"{type(exc).__name__}: {exc}")
            raise ServiceUnavailable(
                "the broker is unavailable; retry later", self._retry_after
            ) from None
        counter = self._published.get(topic)
        if counter is None:
            counter = self._published[topic] = PUBLISHED.labels(topic)
        counter.inc()
