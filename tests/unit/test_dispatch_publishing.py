import uuid
from types import SimpleNamespace

from aiokafka.partitioner import DefaultPartitioner

from services.dispatcher.publishing import KeyPartitions


class FakeCluster:
    def __init__(self, partitions: dict[str, set[int]]) -> None:
        self.partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions.get(topic)


def partitions(cluster: FakeCluster) -> KeyPartitions:
    producer = SimpleNamespace(client=SimpleNamespace(cluster=cluster))
    return KeyPartitions(producer)  # type: ignore[arg-type]


def test_same_partition_as_kafkas_default_partitioner() -> None:
    cluster = FakeCluster({"t": set(range(8))})
    partition_of = partitions(cluster)
    for _ in range(500):
        key = str(uuid.uuid4()).encode()
        assert partition_of("t", key) == DefaultPartitioner()(key, list(range(8)), [])
        assert partition_of("t", key) == partition_of("t", key)  # cached


def test_unknown_topic_leaves_the_choice_to_the_producer() -> None:
    assert partitions(FakeCluster({}))("missing", b"k") is None


def test_a_partition_count_change_is_noticed() -> None:
    cluster = FakeCluster({"t": set(range(4))})
    partition_of = partitions(cluster)
    keys = [str(uuid.uuid4()).encode() for _ in range(200)]
    before = [partition_of("t", k) for k in keys]
    cluster.partitions["t"] = set(range(12))
    after = [partition_of("t", k) for k in keys]
    assert after == [DefaultPartitioner()(k, list(range(12)), []) for k in keys]
    assert after != before
