"""Backfill end to end: real ingest, dispatcher and janitor processes, a real target.

Events are published before the subscription that should get them exists; a backfill
then reads them back from the events topic and the dispatcher delivers them, with
trigger ``backfill`` on their attempts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import RecordsToDelete

from shared.kafka import admin_client
from shared.records import EventRecord, delivery_id_for
from tests.support.broker import IngestServer
from tests.support.dispatch import DispatchWorld
from tests.support.procs import ServiceProcess, running_service
from tests.support.stack import IsolatedStack
from tests.support.targets import TargetServer

pytestmark = pytest.mark.usefixtures("dispatcher", "janitor")

# Low, so that a backfill of a few thousand events lasts long enough to be cancelled.
MAX_RATE = 200


@pytest.fixture(scope="module")
def dispatcher(
    module_stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    with running_service(module_stack, "dispatcher", tmp_path_factory.mktemp("dispatcher")) as proc:
        yield proc


@pytest.fixture(scope="module")
def janitor(
    module_stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    with running_service(
        module_stack,
        "janitor",
        tmp_path_factory.mktemp("janitor"),
        HOOKSTREAM_BACKFILL_MAX_RATE=str(MAX_RATE),
    ) as proc:
        yield proc


def kind() -> str:
    return f"order.created.{uuid.uuid4().hex[:8]}"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def application(op: httpx.AsyncClient, name: str) -> tuple[str, str]:
    """A new application: (its id, a scoped key)."""
    uid = f"{name}-{uuid.uuid4().hex[:8]}"
    app = (await op.post("/applications", json={"uid": uid, "name": name})).json()
    key = (await op.post(f"/applications/{uid}/api-keys", json={"name": name})).json()
    return app["id"], key["key"]


async def publish(
    op: httpx.AsyncClient, app: str, event_type: str, body: dict[str, Any]
) -> uuid.UUID:
    r = await op.post(
        f"/applications/{app}/events", json=body, headers={"x-webhook-event": event_type}
    )
    assert r.status_code == 202, r.text
    return uuid.UUID(r.json()["event_id"])


async def finished(client: httpx.AsyncClient, backfill_id: str, timeout: float = 30) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            state = (await client.get(f"/backfills/{backfill_id}")).json()
            if state["status"] != "running":
                return state
            await asyncio.sleep(0.1)


async def test_events_published_before_a_subscription_existed_reach_it_after_a_backfill(
    operator: httpx.AsyncClient, world: DispatchWorld, target: TargetServer
) -> None:
    app, _ = await application(operator, "shop")
    other_app, _ = await application(operator, "other")
    wanted, unwanted = kind(), kind()
    start = datetime.now(UTC)
    # Before the subscription exists: gold and silver orders of the wanted type, orders of
    # another type, the same orders in another application, and an event targeted at
    # another subscription of this application.
    gold = [await publish(operator, app, wanted, {"n": i, "tier": "gold"}) for i in range(3)]
    for i in range(2):
        await publish(operator, app, wanted, {"n": i, "tier": "silver"})
        await publish(operator, app, unwanted, {"n": i, "tier": "gold"})
        await publish(operator, other_app, wanted, {"n": i, "tier": "gold"})
    other_sub = (
        await operator.post(
            f"/applications/{app}/subscriptions",
            json={"target_url": target.url("/other"), "event_types": [wanted]},
        )
    ).json()["id"]
    r = await operator.post(
        f"/ingest/{other_sub}", json={"tier": "gold"}, headers={"x-webhook-event": wanted}
    )
    assert r.status_code == 202, r.text
    await target.wait_for(1, "/other")

    sub = (
        await operator.post(
            f"/applications/{app}/subscriptions",
            json={
                "target_url": target.url("/new"),
                "event_types": [wanted],
                "filter": {"tier": "gold"},
            },
        )
    ).json()["id"]
    r = await operator.post(f"/subscriptions/{sub}/backfill", json={"since": rfc3339(start)})
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["status"] == "running"
    assert created["backfill_id"] == created["id"]
    assert created["subscription_id"] == sub

    state = await finished(operator, created["backfill_id"])
    assert state["status"] == "done", state
    assert state["error"] is None
    assert state["finished_at"] is not None
    assert state["scanned"] >= 10  # everything published since start, at least
    assert (state["matched"], state["published"]) == (3, 3)

    got = await target.wait_for(3, "/new")
    expected = {str(delivery_id_for(e, uuid.UUID(sub))) for e in gold}
    assert {g.headers["webhook-id"] for g in got} == expected
    rows = await world.wait_attempts("subscription_id = :s", count=3, s=uuid.UUID(sub))
    assert {str(r["delivery_id"]) for r in rows} == expected
    assert {(r["trigger"], r["status"]) for r in rows} == {("backfill", "SUCCESS")}

    # The same window again: every delivery already succeeded, nothing is sent.
    r = await operator.post(f"/subscriptions/{sub}/backfill", json={"since": rfc3339(start)})
    again = await finished(operator, r.json()["backfill_id"])
    assert again["status"] == "done", again
    assert (again["matched"], again["published"]) == (3, 0)
    await asyncio.sleep(1.0)
    assert len(target.received("/new")) == 3
    assert len(await world.attempts("subscription_id = :s", s=uuid.UUID(sub))) == 3


async def test_cancelling_stops_a_backfill_within_a_second(
    operator: httpx.AsyncClient, world: DispatchWorld, target: TargetServer
) -> None:
    event_type = kind()
    start = datetime.now(UTC)
    events = [
        EventRecord(
            event_id=uuid.uuid4(),
            event_type=event_type,
            received_at=datetime.now(UTC),
            content_type="application/json",
            body=b'{"n": %d}' % i,
        )
        for i in range(3000)
    ]
    await world.produce_events(events)
    # Fanned out before the subscription exists: a dispatcher lagging behind would deliver
    # them live (CI saw all 3,000 arrive that way) and the cancel would stop nothing.
    await world.wait_consumed(world.topics.events)
    sub = (
        await operator.post(
            "/subscriptions/", json={"target_url": target.url("/slow"), "event_types": [event_type]}
        )
    ).json()["id"]
    r = await operator.post(f"/subscriptions/{sub}/backfill", json={"since": rfc3339(start)})
    backfill_id = r.json()["backfill_id"]
    await target.wait_for(50, "/slow")  # it is under way

    r = await operator.delete(f"/backfills/{backfill_id}")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None
    await asyncio.sleep(1.5)
    stopped = (await operator.get(f"/backfills/{backfill_id}")).json()
    arrived = len(target.received("/slow"))
    await asyncio.sleep(2.0)
    later = (await operator.get(f"/backfills/{backfill_id}")).json()
    assert later["status"] == "cancelled"
    assert later["published"] == stopped["published"] < 3000
    # What was published before the cancel is delivered; nothing after it.
    assert len(target.received("/slow")) <= max(arrived, stopped["published"]) + 1
    assert len(target.received("/slow")) < 3000 - MAX_RATE

    # Cancelling what has already ended changes nothing.
    r = await operator.delete(f"/backfills/{backfill_id}")
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] == later["finished_at"]


async def trim_partition(settings: Any, topic: str, partition: int, before: int) -> None:
    """What retention does to a partition: every record before ``before`` is gone."""
    async with admin_client(settings.kafka_bootstrap) as admin:
        await admin.delete_records({TopicPartition(topic, partition): RecordsToDelete(before)})


async def test_a_window_the_log_no_longer_holds_is_refused_naming_the_earliest_time(
    operator: httpx.AsyncClient, world: DispatchWorld, target: TargetServer
) -> None:
    # Partition 0 gets a record from 2001 and one from an hour ago; "retention" then
    # removes everything before the latter, which becomes the earliest time available.
    kept_at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    for at in (datetime(2001, 1, 1, tzinfo=UTC), kept_at):
        event = world.event(kind(), b"{}")
        meta = await world.producer.send_and_wait(
            world.topics.events,
            event.body,
            key=event.key,
            headers=event.headers(),
            partition=0,
            timestamp_ms=int(at.timestamp() * 1000),
        )
    await trim_partition(world.settings, world.topics.events, 0, meta.offset)
    sub = (await operator.post("/subscriptions/", json={"target_url": target.url()})).json()["id"]

    for since in ("2000-01-01T00:00:00Z", rfc3339(kept_at - timedelta(seconds=1))):
        r = await operator.post(f"/subscriptions/{sub}/backfill", json={"since": since})
        assert r.status_code == 422, r.text
        (issue,) = r.json()["detail"]
        assert issue["loc"] == ["body", "since"]
        assert f"earliest time available is {rfc3339(kept_at)}" in issue["msg"], issue
    r = await operator.post(f"/subscriptions/{sub}/backfill", json={"since": rfc3339(kept_at)})
    assert r.status_code == 202, r.text
    assert (await finished(operator, r.json()["id"]))["status"] == "done"

    now = datetime.now(UTC)
    refused = {
        "since after until": {"since": rfc3339(now - timedelta(minutes=1)),
                              "until": rfc3339(now - timedelta(minutes=2))},
        "until in the future": {"since": rfc3339(now - timedelta(minutes=1)),
                                "until": rfc3339(now + timedelta(hours=1))},
        "no offset": {"since": "2026-12-01T00:00:00"},
        "a number": {"since": 1764547200},
        "no since": {},
    }  # fmt: skip
    for name, body in refused.items():
        r = await operator.post(f"/subscriptions/{sub}/backfill", json=body)
        assert r.status_code == 422, (name, r.text)
    r = await operator.post(f"/subscriptions/{uuid.uuid4()}/backfill", json={"since": rfc3339(now)})
    assert r.status_code == 404
    assert (await operator.get(f"/backfills/{uuid.uuid4()}")).status_code == 404
    assert (await operator.delete(f"/backfills/{uuid.uuid4()}")).status_code == 404


async def test_a_scoped_key_backfills_only_its_own_subscriptions(
    operator: httpx.AsyncClient, module_ingest: IngestServer, target: TargetServer
) -> None:
    a_app, a_key = await application(operator, "alpha")
    _, b_key = await application(operator, "beta")
    since = rfc3339(datetime.now(UTC) - timedelta(seconds=1))
    async with (
        httpx.AsyncClient(
            base_url=module_ingest.url, headers={"Authorization": f"Bearer {a_key}"}
        ) as a,
        httpx.AsyncClient(
            base_url=module_ingest.url, headers={"Authorization": f"Bearer {b_key}"}
        ) as b,
    ):
        sub = (await a.post("/subscriptions/", json={"target_url": target.url()})).json()["id"]
        r = await a.post(f"/subscriptions/{sub}/backfill", json={"since": since})
        assert r.status_code == 202, r.text
        backfill = r.json()
        assert backfill["application_id"] == a_app

        assert (
            await b.post(f"/subscriptions/{sub}/backfill", json={"since": since})
        ).status_code == 404
        assert (await b.get(f"/backfills/{backfill['id']}")).status_code == 404
        assert (await b.delete(f"/backfills/{backfill['id']}")).status_code == 404
        assert (await a.get(f"/backfills/{backfill['id']}")).json()["id"] == backfill["id"]
        assert (await operator.get(f"/backfills/{backfill['id']}")).status_code == 200
