"""What the cluster scenarios ask of a 3-node Kafka: who leads, whether every replica is
back in sync, what the topics were created with, and how long ingest answered 503."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared.kafka import admin_client
from shared.topics import Topics
from tests.faults.harness import Load
from tests.support.private_stack import PrivateNamespace


@dataclass(frozen=True, slots=True)
class PartitionState:
    topic: str
    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


async def partitions(ns: PrivateNamespace) -> list[PartitionState]:
    """Leader, replicas and in-sync replicas of every partition of the namespace's topics."""
    settings = ns.settings()
    names = list(Topics.from_settings(settings).partition_counts(settings))
    async with admin_client(settings.kafka_bootstrap) as admin:
        described = await asyncio.wait_for(admin.describe_topics(names), 10)
    return [
        PartitionState(
            t["topic"], p["partition"], p["leader"], tuple(p["replicas"]), tuple(p["isr"])
        )
        for t in described
        for p in t["partitions"]
    ]


async def events_leader(ns: PrivateNamespace) -> int:
    """The node that leads the most partitions of the events topic (lowest id on a tie)."""
    events = Topics.from_settings(ns.settings()).events
    leaders = [p.leader for p in await partitions(ns) if p.topic == events]
    return min(set(leaders), key=lambda node: (-leaders.count(node), node))


async def fully_replicated(ns: PrivateNamespace) -> bool:
    """Every partition has a leader and all three replicas in sync."""
    try:
        found = await partitions(ns)
    except (TimeoutError, OSError):
        return False
    return bool(found) and all(p.leader >= 0 and len(p.isr) == 3 for p in found)


async def replication_configs(ns: PrivateNamespace) -> dict[str, tuple[int, str]]:
    """``{topic: (replicas per partition, min.insync.replicas)}`` as the brokers report them."""
    settings = ns.settings()
    names = list(Topics.from_settings(settings).partition_counts(settings))
    replicas = {p.topic: len(p.replicas) for p in await partitions(ns)}
    async with admin_client(settings.kafka_bootstrap) as admin:
        responses = await admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, name, {"min.insync.replicas": None})
                for name in names
            ]
        )
    found = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            [entry] = resource["config_entries"]
            found[resource["resource_name"]] = (
                replicas[resource["resource_name"]],
                entry["config_value"],
            )
    return found


# 503s less than this far apart belong to one outage: at 80 requests/s a continuous
# outage answers 503 every ~12 ms, and the publish timeout is 2 s.
BURST_GAP = 1.0


@dataclass(frozen=True, slots=True)
class Burst:
    start: float  # seconds from the fault to the first 503's request
    end: float  # seconds from the fault to the last 503's answer
    count: int


@dataclass(frozen=True, slots=True)
class Unavailability:
    """The 503 answers of a run, grouped into outages and timed from the fault."""

    count: int
    bursts: tuple[Burst, ...]

    @property
    def seconds(self) -> float:
        return sum(b.end - b.start for b in self.bursts)

    def note(self) -> str:
        if not self.count:
            return "503s: none"
        spans = ", ".join(f"{b.start:+.1f}s..{b.end:+.1f}s ({b.count})" for b in self.bursts)
        return (
            f"503s: {self.count} in {len(self.bursts)} outage(s) totalling "
            f"{self.seconds:.1f}s, from the fault: {spans}"
        )


def unavailability(load: Load, fault: float) -> Unavailability:
    refused = sorted((a for a in load.answers if a.status == 503), key=lambda a: a.sent_at)
    bursts: list[Burst] = []
    for a in refused:
        sent, answered = a.sent_at - fault, a.answered_at - fault
        if bursts and sent - bursts[-1].end < BURST_GAP:
            last = bursts[-1]
            bursts[-1] = Burst(last.start, max(last.end, answered), last.count + 1)
        else:
            bursts.append(Burst(sent, answered, 1))
    return Unavailability(len(refused), tuple(bursts))
