"""Ordered delivery end to end (issue 16): real ingest and dispatcher processes, a real
target on 127.0.0.1 that fails on purpose.

What is checked is what a receiver sees: the first arrival of each delivery comes in the
order the events were accepted, ``webhook-sequence`` increases along them, and a
delivery is never first sent before the one before it, across failures, a dead letter
and a SIGKILL of the dispatcher.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiohttp import web

from services.dispatcher.ordered import IntakeWriter
from shared.db import asyncpg_dsn
from shared.records import DeliveryJob
from shared.settings import Settings
from tests.integration.test_endpoint_controls import deliveries_partition
from tests.support.procs import ServiceProcess, free_port, running_service
from tests.support.stack import IsolatedStack

pytestmark = pytest.mark.slow

EVENT = "ledger.entry"
# Retries in place come quickly in tests; three attempts in all.
SCHEDULE = "100ms,100ms"
ENV = {"HOOKSTREAM_RETRY_SCHEDULE": SCHEDULE, "HOOKSTREAM_DELIVERY_TIMEOUT": "2"}
# The default deliveries partition count (IsolatedStack keeps it).
PARTITIONS = Settings.model_fields["deliveries_partitions"].default


@dataclass
class Arrival:
    path: str
    delivery_id: str
    sequence: int | None
    n: int  # the event's number, from its body
    at: float


@dataclass
class FlakyTarget:
    """On ``/ordered``, answers 500 to the first request of every ``fail_every``-th
    delivery (once) and to every request whose body number is in ``always_fail``; 200
    otherwise, and always on other paths (no retry scheduler runs here)."""

    fail_every: int = 0
    always_fail: set[int] = field(default_factory=set)
    port: int = field(default_factory=free_port)
    arrivals: list[Arrival] = field(default_factory=list)
    _seen: dict[str, int] = field(default_factory=dict)
    _runner: web.AppRunner | None = None

    async def __aenter__(self) -> FlakyTarget:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        delivery_id = request.headers["webhook-id"]
        sequence = request.headers.get("webhook-sequence")
        self.arrivals.append(
            Arrival(
                request.path,
                delivery_id,
                int(sequence) if sequence is not None else None,
                int(body["n"]),
                time.time(),
            )
        )
        if request.path != "/ordered":
            return web.Response(status=200)
        first = delivery_id not in self._seen
        if first:
            self._seen[delivery_id] = len(self._seen) + 1
        if body["n"] in self.always_fail:
            return web.Response(status=500)
        if first and self.fail_every and self._seen[delivery_id] % self.fail_every == 0:
            return web.Response(status=500)
        return web.Response(status=200)

    def first_arrivals(self, path: str) -> list[Arrival]:
        firsts: dict[str, Arrival] = {}
        for a in self.arrivals:
            if a.path == path:
                firsts.setdefault(a.delivery_id, a)
        return sorted(firsts.values(), key=lambda a: self.arrivals.index(a))

    async def wait_for(self, path: str, count: int, timeout: float) -> list[Arrival]:
        try:
            async with asyncio.timeout(timeout):
                while len(got := self.first_arrivals(path)) < count:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            got = self.first_arrivals(path)
            raise AssertionError(
                f"{path}: {len(got)} of {count} deliveries after {timeout:g} s; "
                f"missing numbers {sorted(set(range(count)) - {a.n for a in got})[:20]}"
            ) from None
        return got


@pytest.fixture
async def flaky() -> AsyncIterator[FlakyTarget]:
    async with FlakyTarget(fail_every=7) as target:
        yield target


@pytest.fixture
def dispatcher(module_stack: IsolatedStack, tmp_path: Path) -> Iterator[ServiceProcess]:
    with running_service(module_stack, "dispatcher", tmp_path, **ENV) as proc:
        yield proc


async def _subscription(
    operator: httpx.AsyncClient, app: str, url: str, *, ordered: bool, near: str | None = None
) -> str:
    """A subscription of ``app``; with ``near``, one whose jobs share ``near``'s partition."""
    partitions = PARTITIONS
    while True:
        r = await operator.post(
            f"/applications/{app}/subscriptions",
            json={"target_url": url, "event_types": [EVENT], "ordered": ordered},
        )
        assert r.status_code == 201, r.text
        assert r.json()["ordered"] is ordered
        sub = str(r.json()["id"])
        if near is None or deliveries_partition(sub, partitions) == deliveries_partition(
            near, partitions
        ):
            return sub
        await operator.delete(f"/subscriptions/{sub}")


async def _publish(operator: httpx.AsyncClient, app: str, numbers: range) -> None:
    """Events of ``app`` one after the other (the order the broker accepts them in)."""
    for n in numbers:
        r = await operator.post(
            f"/applications/{app}/events",
            content=b'{"n": %d}' % n,
            headers={"x-webhook-event": EVENT},
        )
        assert r.status_code == 202, r.text


def assert_in_order(firsts: list[Arrival], expected: list[int]) -> None:
    assert [a.n for a in firsts] == expected, "first arrivals out of order"
    sequences = [a.sequence for a in firsts]
    assert all(s is not None for s in sequences), "webhook-sequence missing"
    assert all(b > a for a, b in itertools.pairwise(sequences)), sequences  # type: ignore[operator]


async def test_ordered_subscription_field_is_validated_and_kept(
    operator: httpx.AsyncClient,
) -> None:
    r = await operator.post(
        "/subscriptions/", json={"target_url": "https://e.example/", "ordered": "yes"}
    )
    assert r.status_code == 422
    r = await operator.post("/subscriptions/", json={"target_url": "https://e.example/"})
    sub = r.json()["id"]
    assert r.json()["ordered"] is False
    r = await operator.patch(f"/subscriptions/{sub}", json={"ordered": True})
    assert r.status_code == 200
    assert r.json()["ordered"] is True
    assert (await operator.get(f"/subscriptions/{sub}")).json()["ordered"] is True
    assert (
        await operator.patch(f"/subscriptions/{sub}", json={"ordered": None})
    ).status_code == 422


async def test_a_thousand_events_arrive_in_order_across_failures_and_a_dispatcher_crash(
    operator: httpx.AsyncClient, flaky: FlakyTarget, module_stack: IsolatedStack, tmp_path: Path
) -> None:
    app = (await operator.post("/applications", json={"name": "ordered"})).json()["id"]
    ordered = await _subscription(operator, app, flaky.url("/ordered"), ordered=True)
    # A plain subscription on the same events and partitions: it must not wait.
    await _subscription(operator, app, flaky.url("/plain"), ordered=False, near=ordered)
    total = 1000
    first = ServiceProcess(module_stack, "dispatcher", log_dir=tmp_path, **ENV)
    try:
        await _publish(operator, app, range(total // 2))
        await flaky.wait_for("/ordered", 200, timeout=60)
        first.signal(signal.SIGKILL)  # mid-queue: its lease is left to expire
        first.proc.wait()
    finally:
        first.stop()
    with running_service(module_stack, "dispatcher", tmp_path, **ENV):
        await _publish(operator, app, range(total // 2, total))
        firsts = await flaky.wait_for("/ordered", total, timeout=120)
        plain = await flaky.wait_for("/plain", total, timeout=30)
    assert_in_order(firsts, list(range(total)))
    # Each failing first request was followed by its retry before the next delivery.
    by_path = [a for a in flaky.arrivals if a.path == "/ordered"]
    firsts_at = {a.delivery_id: by_path.index(a) for a in firsts}
    retried = sum(1 for i, a in enumerate(by_path) if firsts_at[a.delivery_id] != i)
    assert retried >= total // 7
    for a, b in itertools.pairwise(firsts):
        assert firsts_at[a.delivery_id] < firsts_at[b.delivery_id]
    assert len({a.delivery_id for a in plain}) == total
    print(
        f"\n[ordered] {total} in order; {retried} requests again (retries and re-sends "
        f"after the crash); plain subscription delivered all {total}"
    )


@pytest.mark.usefixtures("dispatcher")
async def test_a_head_that_ends_in_failure_lets_the_next_go_and_others_never_wait(
    operator: httpx.AsyncClient,
) -> None:
    async with FlakyTarget(always_fail={3}) as target:
        app = (await operator.post("/applications", json={"name": "dead-head"})).json()["id"]
        ordered = await _subscription(operator, app, target.url("/ordered"), ordered=True)
        await _subscription(operator, app, target.url("/plain"), ordered=False, near=ordered)
        await _publish(operator, app, range(10))
        firsts = await target.wait_for("/ordered", 10, timeout=30)
        plain = await target.wait_for("/plain", 10, timeout=10)
    assert_in_order(firsts, list(range(10)))
    ordered_requests = [a for a in target.arrivals if a.path == "/ordered"]
    # Three attempts at number 3, all before number 4's first.
    threes = [i for i, a in enumerate(ordered_requests) if a.n == 3]
    four = next(i for i, a in enumerate(ordered_requests) if a.n == 4)
    assert len(threes) == 3
    assert max(threes) < four
    assert {a.sequence for a in ordered_requests if a.n == 3} == {firsts[3].sequence}
    # The plain subscription was not held up by the head's retries.
    assert max(a.at for a in plain) <= ordered_requests[four].at
    async with httpx.AsyncClient(base_url=operator.base_url, headers=operator.headers) as c:
        status = (await c.get(f"/status/deliveries/{firsts[3].delivery_id}")).json()
    assert status["latest_status"] == "FAILURE", status
    assert status["total_attempts"] == 3


async def test_intake_numbers_jobs_in_order_once_and_requeues_only_a_resend(
    module_stack: IsolatedStack,
) -> None:
    """The group commit's rules on the real table: a batch is numbered in the order it was
    queued, per subscription; a job read again keeps its place; a manual retry of an
    ended job goes to the back with a new number."""
    pool = await asyncpg.create_pool(asyncpg_dsn(module_stack.settings()), min_size=1, max_size=2)
    writer = IntakeWriter(pool)
    writer.start()
    try:
        a, b = uuid.uuid4(), uuid.uuid4()
        jobs = [_job(sub, n) for n, sub in enumerate([a, b, a, a, b])]
        await asyncio.gather(*(writer.write(j) for j in jobs))
        await asyncio.gather(writer.write(jobs[0]), writer.write(jobs[2]))  # read again

        async def queue(sub: uuid.UUID) -> list[tuple[int, int]]:
            rows = await pool.fetch(
                "SELECT seq, body FROM ordered_jobs WHERE subscription_id = $1 ORDER BY seq", sub
            )
            return [(r["seq"], int(r["body"])) for r in rows]

        assert await queue(a) == [(1, 0), (2, 2), (3, 3)]
        assert await queue(b) == [(1, 1), (2, 4)]
        await pool.execute(
            "UPDATE ordered_jobs SET done_at = now() WHERE delivery_id = $1", jobs[0].delivery_id
        )
        await writer.write(replace(jobs[0], trigger="manual-retry"))
        assert await queue(a) == [(2, 2), (3, 3), (4, 0)]
    finally:
        await writer.close(5)
        await pool.close()


def _job(sub: uuid.UUID, n: int) -> DeliveryJob:
    return DeliveryJob(
        delivery_id=uuid.uuid4(),
        event_id=uuid.uuid4(),
        subscription_id=sub,
        event_type=EVENT,
        attempt=1,
        first_received_at=datetime.now(UTC),
        content_type="application/json",
        body=str(n).encode(),
    )
