"""The dispatcher's fetch loop gives the event loop a turn between polls (no broker: a
consumer whose buffer always has records, as aiokafka's does in a backlog)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from services.dispatcher.consumer import Dispatcher
from shared.settings import Settings
from shared.topics import Topics

TOPICS = Topics.from_settings(Settings())


class BufferedConsumer:
    """getmany answers from its buffer at once, without yielding, as aiokafka does while
    it holds fetched records. Each record is a poison one (not a job): the loop skips it
    without spawning anything."""

    def __init__(self, stop: asyncio.Event, polls: int) -> None:
        self.stop = stop
        self.polls_left = polls
        self.offset = 0

    async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        self.polls_left -= 1
        if self.polls_left == 0:
            self.stop.set()
        tp = TopicPartition(TOPICS.deliveries, 0)
        self.offset += 1
        record = ConsumerRecord(tp.topic, 0, self.offset, 0, 0, None, b"not a job", None, 0, 9, ())
        return {tp: [record]}

    def pause(self, *tps: TopicPartition) -> None:
        raise AssertionError("nothing is in progress: no partition reaches a limit")


async def test_the_fetch_loop_lets_other_tasks_run_between_polls() -> None:
    stop = asyncio.Event()
    consumer = BufferedConsumer(stop, polls=50)
    dispatcher = Dispatcher(
        cast(Any, consumer), TOPICS, cast(Any, None), cast(Any, None), drain_timeout=1.0
    )
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(other())
    await asyncio.sleep(0)
    started = turns
    await asyncio.wait_for(dispatcher._fetch_loop(stop), 5)
    ticker.cancel()
    # A turn for the other task after (nearly) every poll, not one at the end.
    assert turns - started >= 49
