"""Topic names and their creation. Names derive from the prefix and the retry schedule."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.settings import Settings, format_duration


@dataclass(frozen=True, slots=True)
class Topics:
    events: str
    deliveries: str
    dlq: str
    # One topic per distinct delay, in schedule order. One fixed delay per topic keeps
    # offset order equal to due order within a partition.
    retry_tiers: tuple[tuple[timedelta, str], ...]
    prefix: str = "hookstream"

    @classmethod
    def from_settings(cls, settings: Settings) -> Topics:
        prefix = settings.topic_prefix
        tiers: dict[timedelta, str] = {}
        for delay in settings.retry_schedule:
            tiers.setdefault(delay, f"{prefix}.retry.{format_duration(delay)}")
        return cls(
            events=f"{prefix}.events",
            deliveries=f"{prefix}.deliveries",
            dlq=f"{prefix}.dlq",
            retry_tiers=tuple(tiers.items()),
            prefix=prefix,
        )

    @property
    def dispatcher_group(self) -> str:
        return f"{self.prefix}.dispatcher"

    @property
    def retry_scheduler_group(self) -> str:
        return f"{self.prefix}.retry-scheduler"

    @property
    def retry_topics(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.retry_tiers)

    def tier_for(self, delay: timedelta) -> tuple[timedelta, str]:
        """The shortest tier whose delay is at least ``delay`` (else the longest)."""
        for tier_delay, name in sorted(self.retry_tiers):
            if tier_delay >= delay:
                return tier_delay, name
        return max(self.retry_tiers)

    def partition_counts(self, settings: Settings) -> dict[str, int]:
        counts = {
            self.events: settings.events_partitions,
            self.deliveries: settings.deliveries_partitions,
            self.dlq: settings.dlq_partitions,
        }
        counts.update(dict.fromkeys(self.retry_topics, settings.retry_partitions))
        return counts

    def configs(self, settings: Settings) -> dict[str, dict[str, str]]:
        """Topic properties set at creation. The events topic is the history backfill
        replays, so its retention is a setting; the others keep the broker's default
        (their records are work in progress, consumed within the retry schedule).
        ``retention.ms`` means the same on Kafka and Redpanda."""
        retention_ms = settings.events_retention_hours * 3_600_000
        return {self.events: {"retention.ms": str(retention_ms)}}


async def ensure_topics(settings: Settings) -> dict[str, str]:
    """Create every topic that is missing; existing ones are left as they are (their
    properties too: change an existing topic's retention with the broker's tools, see
    docs/operations.md).

    Returns ``{topic: "created" | "exists"}``.
    """
    topics = Topics.from_settings(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = topics.partition_counts(settings)
        missing = [
            NewTopic(
                name,
                num_partitions=n,
                replication_factor=settings.topic_replication_factor,
                topic_configs=topics.configs(settings).get(name, {}),
            )
            for name, n in wanted.items()
            if name not in existing
        ]
        result = {name: "exists" for name in wanted if name in existing}
        if missing:
            # Another process may create them between list and create.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
            result.update({t.name: "created" for t in missing})
        await _wait_for_leaders(admin, list(wanted))
        return result
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    # create_topics returns before partition leaders are elected; a producer that
    # starts right after would get NotLeaderForPartition for a few hundred ms.
    for _ in range(100):
        described = await admin.describe_topics(names)
        if all(
            t.get("error_code", 0) == 0
            and t.get("partitions")
            and all(p.get("leader", -1) >= 0 for p in t["partitions"])
            for t in described
        ):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"topics have no leader after 10s: {names}")


def main() -> None:
    from shared.logging import configure_logging, get_logger

    settings = Settings()
    configure_logging(settings)
    result = asyncio.run(ensure_topics(settings))
    log = get_logger("topics")
    for name, state in sorted(result.items()):
        log.info("topic", topic=name, state=state)


if __name__ == "__main__":
    main()
