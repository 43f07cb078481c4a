"""`python -m services.dispatcher`: fan-out and delivery stages in one consumer group."""

from __future__ import annotations

import asyncio

from shared.kafka import make_consumer
from shared.logging import get_logger
from shared.runner import run_worker
from shared.settings import Settings
from shared.topics import Topics

log = get_logger("dispatcher")


async def run(settings: Settings, stop: asyncio.Event) -> None:
    topics = Topics.from_settings(settings)
    consumer = make_consumer(
        settings, topics.events, topics.deliveries, group_id=f"{settings.topic_prefix}.dispatcher"
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                log.info(
                    "skeleton: records seen, not yet delivered",
                    topic=tp.topic,
                    partition=tp.partition,
                    count=len(records),
                )
    finally:
        await consumer.stop()


def main() -> None:
    run_worker("dispatcher", Settings(), run)


if __name__ == "__main__":
    main()
