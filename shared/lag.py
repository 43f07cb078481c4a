"""Consumer lag: how many records a consumer group has not yet committed, per topic."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.settings import Settings


@dataclass(slots=True)
class LagProbe:
    """An admin client (committed offsets) and a group-less consumer (end offsets)."""

    admin: AIOKafkaAdminClient
    consumer: AIOKafkaConsumer

    @classmethod
    async def start(cls, settings: Settings) -> LagProbe:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
        )
        await admin.start()
        try:
            await consumer.start()
        except BaseException:
            await admin.close()
            raise
        return cls(admin, consumer)

    async def close(self) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def lag(self, group_id: str, topics: list[str]) -> dict[str, int]:
        """``{topic: end offset - committed offset, summed over partitions}``.

        A partition the group never committed counts from the log start offset, so a
        topic nobody has consumed yet shows everything in it as lag.
        """
        described = await self.admin.describe_topics(topics)
        partitions = [
            TopicPartition(t["topic"], p["partition"])
            for t in described
            if t.get("error_code", 0) == 0
            for p in t["partitions"]
        ]
        if not partitions:
            return dict.fromkeys(topics, 0)
        ends = await self.consumer.end_offsets(partitions)
        starts = await self.consumer.beginning_offsets(partitions)
        committed = await self.admin.list_consumer_group_offsets(group_id, partitions=partitions)
        result = dict.fromkeys(topics, 0)
        for tp in partitions:
            meta = committed.get(tp)
            position = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
            result[tp.topic] += max(ends[tp] - position, 0)
        return result
