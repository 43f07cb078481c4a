"""The retry scheduler as a real process: SIGKILL and restart mid-way, SIGTERM drains."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from aiokafka import TopicPartition

from shared.settings import Settings
from shared.topics import Topics
from tests.integration.test_retry_scheduler import (
    DeliveriesReader,
    assert_on_time_and_unchanged,
    committed,
    make_job,
    produce,
    tier_settings,
)
from tests.support.procs import ServiceProcess
from tests.support.stack import IsolatedStack

__all__ = ["tier_settings"]  # the fixture, imported so pytest finds it here


def scheduler_process(stack: IsolatedStack, settings: Settings, log_dir: Path) -> ServiceProcess:
    return ServiceProcess(
        stack,
        "retry_scheduler",
        log_dir=log_dir,
        HOOKSTREAM_TOPIC_PREFIX=settings.topic_prefix,
        HOOKSTREAM_LOG_LEVEL="DEBUG",
    )


async def test_sigkill_and_restart_lose_nothing_and_fire_nothing_early(
    stack: IsolatedStack, tier_settings: Settings, tmp_path: Path
) -> None:
    topics = Topics.from_settings(tier_settings)
    now = time.time()
    # 60 retries over six partitions, due from +1.5 s to +6.4 s: the kill at ~+3 s lands
    # with some published, some paused and some maybe acked but not yet committed.
    items = [
        (topic, partition, make_job(now + 1.5 + 0.5 * i))
        for i in range(10)
        for topic in topics.retry_topics
        for partition in (0, 1)
    ]
    sent = await produce(tier_settings, items)
    ids = {str(s.job.delivery_id) for s in sent}
    first = scheduler_process(stack, tier_settings, tmp_path)
    second = None
    try:
        async with DeliveriesReader(tier_settings) as reader:
            while len(reader.by_id()) < 10:
                assert time.time() < now + 20, f"no progress before the kill:\n{first.log()}"
                await reader.poll(0.1)
            first.signal(signal.SIGKILL)
            await asyncio.to_thread(first.proc.wait, 10)
            before_restart = len(reader.by_id())
            second = scheduler_process(stack, tier_settings, tmp_path)
            await reader.until_ids(ids, timeout=60)
            await reader.poll(1.0)  # let late duplicates show up too
        assert first.proc.returncode == -signal.SIGKILL
        assert second.alive(), second.log()
        assert second.stop() == 0, second.log()
    finally:
        first.stop()
        if second is not None:
            second.stop()
    got = reader.by_id()
    assert set(got) == ids
    for s in sent:
        for copy in got[str(s.job.delivery_id)]:
            assert_on_time_and_unchanged(s, copy)
    duplicates = sum(len(copies) - 1 for copies in got.values())
    print(
        f"\nSIGKILL after {before_restart}/{len(ids)} retries: all {len(ids)} arrived, "
        f"none early, {duplicates} duplicates"
    )
    # The restarted process drained and committed on SIGTERM.
    ends = {TopicPartition(s.topic, s.partition): s.offset + 1 for s in sent}
    assert await committed(tier_settings) == ends


async def test_sigterm_finishes_and_commits_then_exits_cleanly(
    stack: IsolatedStack, tier_settings: Settings, tmp_path: Path
) -> None:
    t1 = Topics.from_settings(tier_settings).retry_topics[0]
    now = time.time()
    due, later = await produce(
        tier_settings, [(t1, 0, make_job(now + 1)), (t1, 0, make_job(now + 3600))]
    )
    proc = scheduler_process(stack, tier_settings, tmp_path)
    try:
        async with DeliveriesReader(tier_settings) as reader:
            await reader.until_ids({str(due.job.delivery_id)}, timeout=30)
    finally:
        code = proc.stop()
    log = proc.log()
    assert code == 0, log
    assert '"event": "stopped"' in log
    assert "Traceback" not in log
    assert '"event": "retry re-published"' in log
    assert f'"delivery_id": "{due.job.delivery_id}"' in log
    # Committed up to the record still waiting, not past it.
    assert (await committed(tier_settings))[TopicPartition(t1, 0)] == later.offset
