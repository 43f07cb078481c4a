"""A target that goes down for good: every webhook promised to it must still end, as
FAILURE with a dead letter, in a bounded time (design §3, §6).

The bound: the retry schedule (1s, 2s, 3s, plus 20 % jitter), one circuit-breaker
cool-down (30 s: jobs wait unattempted meanwhile) and a probe lease (15 s), with room
to spare: 90 s for 40 webhooks.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from shared.signing import hub_signature
from tests.faults.harness import (
    REPORT_LINES,
    Services,
    dead_letter_ids,
    ids_with_status,
    query,
)
from tests.faults.test_worker_crashes import RetryBacklog
from tests.support.private_stack import PrivateNamespace
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(300)]

WEBHOOKS = 40
DEADLINE = 90.0


# Found a real bug: jobs for a target whose breaker stayed open were deferred forever
# without using an attempt. Past its schedule plus one breaker cool-down a deferral now
# counts as a failed attempt (services/dispatcher/delivery_stage.py, DeliveryStage._overdue).
async def test_every_webhook_to_a_dead_target_ends_in_failure_and_a_dead_letter(
    namespace: PrivateNamespace, tmp_path: Path
) -> None:
    attempts = 0

    async def down(request: web.Request) -> web.Response:
        nonlocal attempts
        await request.read()
        attempts += 1
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/hook", down)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    services = Services(namespace, tmp_path)
    try:
        ingest = services.start_ingest()
        services.start_dispatcher()
        services.start_scheduler()
        await wait_until(
            lambda: services.dispatchers_cover_all() and services.scheduler_ready(),
            timeout=60,
            what="dispatcher and retry scheduler to hold their partitions",
            details=services.tails,
        )
        secret = uuid.uuid4().hex
        promised: set[str] = set()
        async with aiohttp.ClientSession(headers=ingest.auth) as http:
            async with http.post(
                f"{ingest.url}/subscriptions/", json={"target_url": url, "secret_key": secret}
            ) as resp:
                sub_id = (await resp.json())["id"]
            for n in range(WEBHOOKS):
                body = b'{"n": %d}' % n
                async with http.post(
                    f"{ingest.url}/ingest/{sub_id}",
                    data=body,
                    headers={"x-hub-signature-256": hub_signature(secret, body)},
                ) as resp:
                    assert resp.status == 202, await resp.text()
                    promised.add((await resp.json())["delivery_id"])
        started = time.monotonic()
        async with RetryBacklog(namespace) as backlog:
            before = await backlog.total()
            failed: set[str] = set()

            async def all_failed() -> bool:
                nonlocal failed
                failed = promised & await ids_with_status(namespace, "FAILURE")
                return failed == promised

            try:
                await wait_until(all_failed, timeout=DEADLINE, what="FAILURE rows", every=1.0)
            finally:
                churn = await backlog.total() - before
                rows = await query(
                    namespace,
                    "SELECT count(*) AS n FROM delivery_attempts WHERE delivery_id = ANY($1)",
                    [uuid.UUID(i) for i in promised],
                )
                # "lost" here: not terminal by the deadline (they still cycle on the tiers).
                line = (
                    f"scenario=target-down-for-good accepted={WEBHOOKS} delivered=0 "
                    f"lost={WEBHOOKS - len(failed)} duplicates=0 failed={len(failed)} "
                    f"seconds={time.monotonic() - started:.0f} attempts_at_target={attempts} "
                    f"attempt_rows={rows[0]['n']} retry_records={churn}"
                )
                REPORT_LINES.append(line)
                print(f"\n{line}")
        assert promised <= await dead_letter_ids(namespace)
        assert not services.dead()
    finally:
        services.stop_all()
        await runner.cleanup()
