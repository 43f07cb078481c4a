"""`python -m services.retry_scheduler`: re-publishes due retries from the tier topics."""

from __future__ import annotations

import asyncio

from shared.kafka import make_consumer
from shared.logging import get_logger
from shared.runner import run_worker
from shared.settings import Settings
from shared.topics import Topics

log = get_logger("retry_scheduler")


async def run(settings: Settings, stop: asyncio.Event) -> None:
    topics = Topics.from_settings(settings)
    consumer = make_consumer(
        settings, *topics.retry_topics, group_id=f"{settings.topic_prefix}.retry-scheduler"
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                log.info(
                    "skeleton: retries seen",
                    topic=tp.topic,
                    partition=tp.partition,
                    count=len(records),
                )
    finally:
        await consumer.stop()


def main() -> None:
    run_worker("retry_scheduler", Settings(), run)


if __name__ == "__main__":
    main()
