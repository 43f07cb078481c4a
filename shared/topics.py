"""Topic names and their creation. Names derive from the prefix and the retry schedule."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.kafka import admin_client
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

    def configs(
        self, settings: Settings, replication: Replication | None = None
    ) -> dict[str, dict[str, str]]:
        """Topic properties set at creation. The events topic is the history backfill
        replays, so its retention is a setting; the others keep the broker's default
        (their records are work in progress, consumed within the retry schedule).
        ``retention.ms`` means the same on Kafka and Redpanda; ``min.insync.replicas``
        (every topic, when ``replication`` has one) is Kafka's, and Redpanda logs it
        and ignores it (its create_topics handler; acks=all there waits for a majority)."""
        retention_ms = settings.events_retention_hours * 3_600_000
        configs: dict[str, dict[str, str]] = {name: {} for name in self.partition_counts(settings)}
        configs[self.events]["retention.ms"] = str(retention_ms)
        if replication is not None and replication.min_insync is not None:
            for props in configs.values():
                props["min.insync.replicas"] = str(replication.min_insync)
        return configs


@dataclass(frozen=True, slots=True)
class Replication:
    """How many copies each partition has, and how many acks=all waits for."""

    factor: int
    min_insync: int | None  # None: the broker's default

    @classmethod
    def for_cluster(cls, settings: Settings, brokers: int) -> Replication:
        """What topics get on a cluster of ``brokers`` live brokers: the settings, or
        min(3, brokers) copies and, from 3 copies on, 2 in sync before a write counts."""
        factor = settings.topic_replication_factor or min(3, brokers)
        min_insync = settings.topic_min_insync_replicas
        if min_insync is None and factor >= 3:
            min_insync = 2
        if min_insync is not None and min_insync > factor:
            # Kafka would create such topics and then refuse every acks=all write.
            raise ValueError(
                f"HOOKSTREAM_TOPIC_MIN_INSYNC_REPLICAS={min_insync} is more than the "
                f"replication factor {factor}: no write could ever be acknowledged"
            )
        return cls(factor, min_insync)


async def ensure_topics(settings: Settings) -> dict[str, str]:
    """Create every topic that is missing; existing ones are left as they are (their
    properties too: change an existing topic's retention with the broker's tools, see
    docs/operations.md).

    Returns ``{topic: "created" | "exists"}``.
    """
    topics = Topics.from_settings(settings)
    async with admin_client(settings.kafka_bootstrap) as admin:
        existing = set(await admin.list_topics())
        wanted = topics.partition_counts(settings)
        # The metadata lists the brokers that are up (registered and not fenced): create
        # topics while all of them are, or set the factor explicitly.
        brokers = len((await admin.describe_cluster())["brokers"])
        replication = Replication.for_cluster(settings, brokers)
        configs = topics.configs(settings, replication)
        missing = [
            NewTopic(
                name,
                num_partitions=n,
                replication_factor=replication.factor,
                topic_configs=configs[name],
            )
            for name, n in wanted.items()
            if name not in existing
        ]
        result = {name: "exists" for name in wanted if name in existing}
        if missing:
            # Another process may create them between list and create.
            with contextlib.suppress(TopicAlreadyExistsError):
                response = await admin.create_topics(missing)
                _raise_for_topic_errors(response.to_object()["topic_errors"])
            result.update({t.name: "created" for t in missing})
        await _wait_for_leaders(admin, list(wanted))
        return result


def _raise_for_topic_errors(errors: list[dict[str, Any]]) -> None:
    # aiokafka returns the per-topic errors instead of raising them: an invalid factor
    # (more than the live brokers; an even one on Redpanda) would otherwise surface ten
    # seconds later as "no leader".
    failed = {
        e["topic"]: f"{e['error_code']} {e.get('error_message') or ''}".strip()
        for e in errors
        if e["error_code"] not in (0, TopicAlreadyExistsError.errno)
    }
    if failed:
        raise RuntimeError(f"the broker refused to create topics: {failed}")


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
