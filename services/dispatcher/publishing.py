"""Produce records and wait for the broker's acknowledgement (acks=all), retrying.

A record that cannot be published keeps its source offset unfinished, so retrying here
(rather than giving up) is what keeps "losses are not possible" true while the broker is
away; a shutdown or rebalance cancels the wait and the source record is replayed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from shared.logging import get_logger
from shared.metrics import PUBLISHED
from shared.records import Headers

log = get_logger("dispatcher.publishing")

_BACKOFF_FIRST = 0.2
_BACKOFF_MAX = 5.0


@dataclass(frozen=True, slots=True)
class OutRecord:
    topic: str
    key: bytes
    value: bytes
    headers: Headers


class KeyPartitions:
    """The partition Kafka's default partitioner picks for a key, remembered per key.

    aiokafka hashes every record's key with a pure-Python murmur2: ~15 % of fan-out's CPU
    in a profile. Job keys are subscription ids, a small set, so the answer is cached.
    It is the default partitioner's mapping (the Java client's too), so a subscription's
    jobs land where ingest and the retry scheduler would put them.
    """

    def __init__(self, producer: AIOKafkaProducer, max_keys: int = 100_000) -> None:
        self._cluster = producer.client.cluster
        self._max_keys = max_keys
        self._known: dict[tuple[str, bytes], tuple[int, int]] = {}

    def __call__(self, topic: str, key: bytes) -> int | None:
        """None until the topic's metadata is known (the producer then decides)."""
        partitions = self._cluster.partitions_for_topic(topic)
        if not partitions:
            return None
        count = len(partitions)
        known = self._known.get((topic, key))
        if known is not None and known[0] == count:
            return known[1]
        partition: int = sorted(partitions)[(murmur2(key) & 0x7FFFFFFF) % count]
        if len(self._known) >= self._max_keys:
            self._known.clear()
        self._known[(topic, key)] = (count, partition)
        return partition


class Publisher:
    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._partition_of = KeyPartitions(producer)

    async def publish(
        self, records: list[OutRecord], sent: asyncio.Future[None] | None = None
    ) -> None:
        """Enqueue every record, then wait until each is acknowledged; retry the failed
        ones. ``sent`` resolves once every record is enqueued the first time: records
        enqueued later go after them in each partition."""
        producer = self._producer
        partition_of = self._partition_of
        backoff = _BACKOFF_FIRST
        todo = records
        while todo:
            acks: list[asyncio.Future[object] | BaseException] = []
            for record in todo:
                try:
                    acks.append(
                        await producer.send(
                            record.topic,
                            record.value,
                            key=record.key,
                            headers=record.headers,
                            partition=partition_of(record.topic, record.key),
                        )
                    )
                except KafkaError as exc:
                    acks.append(exc)
            if sent is not None and not sent.done():
                sent.set_result(None)
            failed: list[OutRecord] = []
            error: BaseException | None = None
            published: Counter[str] = Counter()
            for record, ack in zip(todo, acks, strict=True):
                if isinstance(ack, BaseException):
                    failed.append(record)
                    error = ack
                    continue
                try:
                    await ack
                except KafkaError as exc:
                    failed.append(record)
                    error = exc
                else:
                    published[record.topic] += 1
            for topic, count in published.items():
                PUBLISHED.labels(topic).inc(count)
            if not failed:
                return
            log.warning(
                "publish failed, retrying",
                records=len(failed),
                topic=failed[0].topic,
                error=f"{type(error).__name__}: {error}",
                retry_in=backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)
            todo = failed
