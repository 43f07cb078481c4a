"""A dispatcher stopped mid-request (SIGSTOP, then SIGCONT) does not blame the target.

While the process is stopped its request's deadline keeps running; when it runs again
the request "times out" at once. That attempt is recorded as cut short by the stall,
sent again at once with the same attempt number (and, by construction, never reported to
the target's circuit breaker). A real dispatcher process, a real target on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from shared.records import DeliveryJob
from tests.support.dispatch import DispatchWorld
from tests.support.procs import running_service
from tests.support.stack import IsolatedStack
from tests.support.targets import TargetServer

pytestmark = pytest.mark.slow

DELIVERY_TIMEOUT = 2.0
# Longer than the delivery timeout, well inside the consumer's 10 s session timeout: the
# process keeps its partitions, so the outcome is its own to record.
STOPPED_FOR = 4.5


async def test_a_stopped_dispatcher_sends_again_and_blames_nobody(
    module_stack: IsolatedStack, world: DispatchWorld, tmp_path: Path
) -> None:
    async with TargetServer() as target:
        # The first request is held unanswered; the stall will cut it short.
        target.reply("/hook", delay=30)
        sub = await world.add_subscription(target.url("/hook"))
        event = world.event("stall.test", b'{"n": 1}', subscription_id=sub)
        job = DeliveryJob.for_event(event, sub)
        with running_service(
            module_stack,
            "dispatcher",
            tmp_path,
            HOOKSTREAM_DELIVERY_TIMEOUT=str(DELIVERY_TIMEOUT),
            HOOKSTREAM_RETRY_SCHEDULE="5s,5s",
        ) as dispatcher:
            await world.produce_job(job)
            await target.wait_for(1, "/hook")
            dispatcher.signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            target.reply("/hook")  # from now on it answers at once
            await asyncio.sleep(STOPPED_FOR)
            dispatcher.signal(signal.SIGCONT)
            assert time.monotonic() - stopped_at >= STOPPED_FOR
            rows = await world.wait_attempts("delivery_id = :d", count=2, d=job.delivery_id)
        log = dispatcher.log()
    cut, delivered = rows
    assert cut["status"] == "FAILED_ATTEMPT"
    assert "cut short" in cut["error_details"], cut["error_details"]
    assert cut["attempt_number"] == 1
    assert delivered["status"] == "SUCCESS"
    # Sent again at once, not after the 5 s retry tier, with the same attempt number.
    assert delivered["attempt_number"] == 1
    assert (delivered["created_at"] - cut["created_at"]).total_seconds() < 3
    assert len(target.received("/hook")) == 2
    assert "attempt cut short by a stall" in log
