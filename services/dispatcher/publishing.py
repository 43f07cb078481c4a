"""Produce records and wait for the broker's acknowledgement (acks=all), retrying.

A record that cannot be published keeps its source offset unfinished, so retrying here
(rather than giving up) is what keeps "losses are not possible" true while the broker is
away; a shutdown or rebalance cancels the wait and the source record is replayed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

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


async def publish_all(producer: AIOKafkaProducer, records: list[OutRecord]) -> None:
    """Enqueue every record, then wait until each is acknowledged; retry the failed ones."""
    backoff = _BACKOFF_FIRST
    todo = records
    while todo:
        acks: list[asyncio.Future[object] | BaseException] = []
        for record in todo:
            try:
                acks.append(
                    await producer.send(
                        record.topic, record.value, key=record.key, headers=record.headers
                    )
                )
            except KafkaError as exc:
                acks.append(exc)
        failed: list[OutRecord] = []
        error: BaseException | None = None
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
                PUBLISHED.labels(record.topic).inc()
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
