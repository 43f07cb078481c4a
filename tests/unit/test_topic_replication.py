"""How many copies topics get, and how many acks=all waits for, by cluster size."""

from __future__ import annotations

import pytest

from shared.settings import Settings
from shared.topics import Replication, Topics


@pytest.mark.parametrize(
    ("brokers", "factor", "min_insync"),
    [(1, 1, None), (2, 2, None), (3, 3, 2), (5, 3, 2)],
)
def test_defaults_follow_the_cluster(brokers: int, factor: int, min_insync: int | None) -> None:
    assert Replication.for_cluster(Settings(), brokers) == Replication(factor, min_insync)


def test_settings_win_over_the_cluster() -> None:
    settings = Settings(topic_replication_factor=5, topic_min_insync_replicas=3)
    assert Replication.for_cluster(settings, 3) == Replication(5, 3)
    assert Replication.for_cluster(Settings(topic_replication_factor=3), 9) == Replication(3, 2)
    assert Replication.for_cluster(Settings(topic_min_insync_replicas=1), 3) == Replication(3, 1)


def test_a_minimum_above_the_copies_is_refused() -> None:
    with pytest.raises(ValueError, match="MIN_INSYNC_REPLICAS=2 is more than"):
        Replication.for_cluster(Settings(topic_min_insync_replicas=2), 1)


def test_every_topic_gets_the_minimum_and_events_keep_their_retention() -> None:
    settings = Settings(retry_schedule="1s,2s")
    topics = Topics.from_settings(settings)
    configs = topics.configs(settings, Replication(3, 2))
    assert set(configs) == set(topics.partition_counts(settings))
    assert all(c["min.insync.replicas"] == "2" for c in configs.values())
    assert configs[topics.events]["retention.ms"] == str(168 * 3_600_000)
    single = topics.configs(settings, Replication(1, None))
    assert single[topics.deliveries] == {}
    assert single[topics.events] == {"retention.ms": str(168 * 3_600_000)}
