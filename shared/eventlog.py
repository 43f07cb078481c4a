"""The events topic as history: what time it still reaches back to, and the offsets of a
window of it (backfill, design §12).

A record's time here is its broker timestamp (the producer's create time, set when ingest
published it, within milliseconds of the event's ``received_at``). Kafka answers "the first
offset at or after this time" per partition (``offsets_for_times``), so a window costs one
request, not a scan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.settings import Settings

# Producers' clocks differ a little and a partition's timestamps are not strictly ordered:
# a window's offsets are looked up this much wider, and its records then kept by timestamp.
CLOCK_SLACK = timedelta(minutes=1)


@asynccontextmanager
async def history_reader(settings: Settings) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer with no group and nothing subscribed: the caller assigns and seeks.
    It commits nothing, so it never disturbs the dispatcher's group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # Whole batches of small events: one fetch returns thousands of records.
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
        fetch_max_wait_ms=100,
        isolation_level="read_uncommitted",
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    # The consumer's public partitions_for_topic only knows topics it subscribed to, and
    # topics() returns names only: ask the client for fresh metadata of every topic.
    cluster = await consumer._client.fetch_all_metadata()
    parts = cluster.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(parts)]


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _ms(moment: datetime) -> int:
    return max(0, int(moment.timestamp() * 1000))


async def earliest_available(
    consumer: AIOKafkaConsumer, topic: str, retention: timedelta, now: datetime
) -> datetime | None:
    """The earliest time from which the topic still holds every event it was given, or
    None when retention has removed nothing yet (every window is then complete).

    A partition whose beginning offset is still 0 lost nothing. One that retention has
    trimmed holds everything from its first remaining record on; one trimmed to nothing,
    everything younger than the retention. The log is complete from the latest of these.
    """
    tps = await partitions_of(consumer, topic)
    if not tps:
        return None
    begins = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    trimmed = [tp for tp in tps if begins[tp] > 0]
    if not trimmed:
        return None
    firsts = await consumer.offsets_for_times(dict.fromkeys(trimmed, 0))
    bounds = []
    for tp in trimmed:
        first = firsts.get(tp)
        if begins[tp] >= ends[tp] or first is None:
            bounds.append(now - retention)
        else:
            bounds.append(_at(first.timestamp))
    return max(bounds)


@dataclass(frozen=True, slots=True)
class Window:
    """Per partition: the first offset to read and the offset to stop before."""

    starts: dict[int, int]
    stops: dict[int, int]

    @property
    def size(self) -> int:
        return sum(max(0, self.stops[p] - self.starts[p]) for p in self.starts)


async def window_offsets(
    consumer: AIOKafkaConsumer, topic: str, since: datetime, until: datetime
) -> Window:
    """The offsets of ``[since, until]``, bounded by the end offsets as of now: what is
    published after this call is live traffic, not history."""
    tps = await partitions_of(consumer, topic)
    ends = await consumer.end_offsets(tps)
    froms = await consumer.offsets_for_times(dict.fromkeys(tps, _ms(since - CLOCK_SLACK)))
    tos = await consumer.offsets_for_times(dict.fromkeys(tps, _ms(until + CLOCK_SLACK)))
    starts: dict[int, int] = {}
    stops: dict[int, int] = {}
    for tp in tps:
        end = ends[tp]
        found_from, found_to = froms.get(tp), tos.get(tp)
        stops[tp.partition] = min(end, found_to.offset) if found_to is not None else end
        starts[tp.partition] = found_from.offset if found_from is not None else end
    return Window(starts, stops)


def window_ms(since: datetime, until: datetime) -> tuple[int, int]:
    """The window as broker timestamps (ms), both ends included."""
    return _ms(since), _ms(until)
