"""Feeding and inspecting a dispatcher under test, as the other services would.

Subscriptions go straight into the ``subscriptions`` table (the ingest API owns their
HTTP routes), followed by the cache-invalidation message ingest sends; events are
produced to the events topic exactly as ingest produces them (key, headers, the exact
body bytes); attempt rows and topics are read back directly.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import make_engine, make_sessionmaker
from shared.kafka import admin_client, make_producer
from shared.models import Subscription
from shared.records import DeliveryJob, EventRecord, Headers
from shared.redis import make_redis
from shared.settings import Settings
from shared.subscriptions import notify_changed
from shared.topics import Topics

Row = dict[str, Any]


class DispatchWorld:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.group = f"{settings.topic_prefix}.dispatcher"
        self.engine: AsyncEngine = make_engine(settings, pool_size=2)
        self.sessions = make_sessionmaker(self.engine)
        self.producer = make_producer(settings)
        self.redis = make_redis(settings)

    async def __aenter__(self) -> DispatchWorld:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()
        await self.redis.aclose()
        await self.engine.dispose()

    # --- subscriptions ------------------------------------------------------------

    async def add_subscription(
        self,
        target_url: str,
        *,
        secret: str | None = None,
        event_types: Sequence[str] = (),
        active: bool = True,
        rate_limit: int | None = None,
        ordered: bool = False,
    ) -> uuid.UUID:
        sub_id = uuid.uuid4()
        async with self.sessions.begin() as session:
            session.add(
                Subscription(
                    id=sub_id,
                    target_url=target_url,
                    secret_key=secret,
                    event_types=list(event_types),
                    is_active=active,
                    rate_limit=rate_limit,
                    ordered=ordered,
                )
            )
        await notify_changed(self.redis, self.settings.topic_prefix, sub_id)
        return sub_id

    async def add_subscriptions(
        self,
        target_url: str,
        count: int,
        *,
        event_types: Sequence[str] = (),
        body_filter: dict[str, Any] | None = None,
    ) -> list[uuid.UUID]:
        ids = [uuid.uuid4() for _ in range(count)]
        async with self.sessions.begin() as session:
            session.add_all(
                Subscription(
                    id=i, target_url=target_url, event_types=list(event_types), filter=body_filter
                )
                for i in ids
            )
        await notify_changed(self.redis, self.settings.topic_prefix, ids[0])
        return ids

    async def subscription(self, sub_id: uuid.UUID) -> Row:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT * FROM subscriptions WHERE id = :id"), {"id": sub_id}
                )
            ).one()
        return dict(row._mapping)

    async def delete_subscription(self, sub_id: uuid.UUID) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(text("DELETE FROM subscriptions WHERE id = :id"), {"id": sub_id})
        await notify_changed(self.redis, self.settings.topic_prefix, sub_id)

    # --- producing, as ingest and the retry scheduler do --------------------------

    @staticmethod
    def event(
        event_type: str,
        body: bytes,
        subscription_id: uuid.UUID | None = None,
        content_type: str = "application/json",
    ) -> EventRecord:
        return EventRecord(
            event_id=uuid.uuid4(),
            event_type=event_type,
            received_at=datetime.now(UTC),
            content_type=content_type,
            body=body,
            subscription_id=subscription_id,
        )

    async def produce_event(self, event: EventRecord) -> int:
        meta = await self.producer.send_and_wait(
            self.topics.events, event.body, key=event.key, headers=event.headers()
        )
        return int(meta.offset)

    async def produce_events(self, events: Sequence[EventRecord]) -> None:
        acks = [
            await self.producer.send(self.topics.events, e.body, key=e.key, headers=e.headers())
            for e in events
        ]
        await asyncio.gather(*acks)

    async def produce_job(self, job: DeliveryJob, partition: int | None = None) -> Any:
        return await self.producer.send_and_wait(
            self.topics.deliveries,
            job.body,
            key=job.key,
            headers=job.headers(),
            partition=partition,
        )

    async def produce_jobs(self, jobs: Sequence[DeliveryJob], partition: int | None = None) -> None:
        acks = [
            await self.producer.send(
                self.topics.deliveries, j.body, key=j.key, headers=j.headers(), partition=partition
            )
            for j in jobs
        ]
        await asyncio.gather(*acks)

    async def produce_raw(
        self, topic: str, value: bytes, headers: Headers, key: bytes, partition: int | None = None
    ) -> Any:
        return await self.producer.send_and_wait(
            topic, value, key=key, headers=headers, partition=partition
        )

    # --- reading back -------------------------------------------------------------

    async def attempts(self, where: str = "true", **params: Any) -> list[Row]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(f"SELECT * FROM delivery_attempts WHERE {where} ORDER BY created_at"),  # noqa: S608
                params,
            )
        return [dict(r._mapping) for r in rows]

    async def wait_attempts(
        self,
        where: str,
        *,
        count: int = 1,
        timeout: float = 30.0,
        **params: Any,
    ) -> list[Row]:
        async with asyncio.timeout(timeout):
            while len(rows := await self.attempts(where, **params)) < count:
                await asyncio.sleep(0.1)
        return rows

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.engine.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar()

    async def read_topic(
        self,
        topic: str,
        match: Callable[[DeliveryJob], bool],
        *,
        count: int = 1,
        timeout: float = 30.0,
    ) -> list[DeliveryJob]:
        """Records of ``topic`` (decoded as jobs) that ``match``, read from the start."""
        partitions = await self.partitions(topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.seek_to_beginning()
            found: list[DeliveryJob] = []
            async with asyncio.timeout(timeout):
                while len(found) < count:
                    batches = await consumer.getmany(timeout_ms=200)
                    for records in batches.values():
                        for r in records:
                            job = DeliveryJob.decode(r.value, r.headers)
                            if match(job):
                                found.append(job)
            return found
        finally:
            await consumer.stop()

    async def everything_in(self, topic: str) -> list[DeliveryJob]:
        """Every record of ``topic`` up to its current end, decoded as jobs."""
        partitions = await self.partitions(topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.seek_to_beginning()
            # After the seek: asked before it, on a topic created moments ago, the end
            # offsets came back 0 and the read silently found nothing.
            ends = await consumer.end_offsets(partitions)
            found: list[DeliveryJob] = []
            async with asyncio.timeout(30):
                for tp in partitions:
                    while await consumer.position(tp) < ends[tp]:
                        records = (await consumer.getmany(tp, timeout_ms=200)).get(tp, [])
                        found.extend(DeliveryJob.decode(r.value, r.headers) for r in records)
            return found
        finally:
            await consumer.stop()

    async def partitions(self, topic: str) -> list[TopicPartition]:
        async with admin_client(self.settings.kafka_bootstrap) as admin:
            (described,) = await admin.describe_topics([topic])
        return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap)
        await consumer.start()
        try:
            ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
            return ends
        finally:
            await consumer.stop()

    async def wait_consumed(self, topic: str, timeout: float = 30.0) -> None:
        """Until the dispatcher has committed everything now in ``topic``: what a test
        publishes next (a subscription, say) cannot be seen by those records any more."""
        ends = await self.end_offsets(await self.partitions(topic))
        async with asyncio.timeout(timeout):
            while True:
                committed = await self.committed()
                if all(committed.get(tp, 0) >= end for tp, end in ends.items()):
                    return
                await asyncio.sleep(0.1)

    async def committed(self) -> dict[TopicPartition, int]:
        async with admin_client(self.settings.kafka_bootstrap) as admin:
            offsets = await admin.list_consumer_group_offsets(self.group)
        return {tp: meta.offset for tp, meta in offsets.items()}
