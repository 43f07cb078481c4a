"""Applications and scoped keys on the real stack: ingest and dispatcher processes,
PostgreSQL, Redis, Kafka and HTTP targets on 127.0.0.1.

Two applications hold subscriptions on the same event type; what is published to one
reaches only its own targets, and each one's key sees only its own objects.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support.broker import IngestServer, running_ingest
from tests.support.procs import ServiceProcess, running_service
from tests.support.stack import IsolatedStack
from tests.support.targets import TargetServer

EVENT = "order.created"


@pytest.fixture(scope="module")
def dispatcher(
    module_stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    with running_service(
        module_stack,
        "dispatcher",
        tmp_path_factory.mktemp("dispatcher"),
        HOOKSTREAM_SUBSCRIPTION_CACHE_TTL="1",
    ) as proc:
        yield proc


class Tenant:
    """An application made through the API, with one key and a client holding it."""

    def __init__(self, app: dict[str, Any], key: dict[str, Any], client: httpx.AsyncClient):
        self.app = app
        self.key = key
        self.client = client

    @property
    def id(self) -> str:
        return str(self.app["id"])


async def make_tenant(operator: httpx.AsyncClient, name: str) -> Tenant:
    uid = f"{name}-{uuid.uuid4().hex[:8]}"
    r = await operator.post("/applications", json={"uid": uid, "name": name})
    assert r.status_code == 201, r.text
    app = r.json()
    r = await operator.post(f"/applications/{uid}/api-keys", json={"name": f"{name} key"})
    assert r.status_code == 201, r.text
    key = r.json()
    client = httpx.AsyncClient(
        base_url=str(operator.base_url),
        timeout=15,
        headers={"Authorization": f"Bearer {key['key']}"},
    )
    return Tenant(app, key, client)


@pytest.fixture
async def tenants(operator: httpx.AsyncClient) -> AsyncIterator[tuple[Tenant, Tenant]]:
    a = await make_tenant(operator, "alpha")
    b = await make_tenant(operator, "beta")
    yield a, b
    await a.client.aclose()
    await b.client.aclose()


async def add_subscription(client: httpx.AsyncClient, path: str, url: str) -> dict[str, Any]:
    r = await client.post(path, json={"target_url": url, "event_types": [EVENT]})
    assert r.status_code == 201, r.text
    return dict(r.json())


# --- applications -------------------------------------------------------------------


async def test_application_crud_and_uid_rules(operator: httpx.AsyncClient) -> None:
    uid = f"cust-{uuid.uuid4().hex[:8]}"
    r = await operator.post(
        "/applications", json={"uid": uid, "name": "Customer", "metadata": {"plan": "pro"}}
    )
    assert r.status_code == 201, r.text
    app = r.json()
    assert app["uid"] == uid
    assert app["metadata"] == {"plan": "pro"}
    assert (await operator.post("/applications", json={"uid": uid, "name": "x"})).status_code == 409
    for bad in ({"name": ""}, {"uid": "has space", "name": "x"}, {"uid": str(uuid.uuid4()),
                "name": "x"}, {"name": "x", "metadata": {"k": "v" * 5000}}, {"name": "x",
                "metadata": [1]}):  # fmt: skip
        assert (await operator.post("/applications", json=bad)).status_code == 422, bad

    by_id = (await operator.get(f"/applications/{app['id']}")).json()
    by_uid = (await operator.get(f"/applications/{uid}")).json()
    assert by_id == by_uid == app
    r = await operator.patch(f"/applications/{uid}", json={"name": "Renamed"})
    assert r.status_code == 200
    assert r.json()["name"] == "Renamed"
    assert (await operator.patch(f"/applications/{uid}", json={"name": None})).status_code == 422

    assert (await operator.delete(f"/applications/{uid}")).status_code == 204
    assert (await operator.get(f"/applications/{uid}")).status_code == 404
    # The uid is free again once its application is deleted.
    r = await operator.post("/applications", json={"uid": uid, "name": "Again"})
    assert r.status_code == 201
    assert (await operator.delete("/applications/default")).status_code == 409
    # What no uid can be is not found, before PostgreSQL sees it (a NUL was its error).
    for nothing in ("a%00b", "has%20space", "%C3%A9t%C3%A9"):
        r = await operator.get(f"/applications/{nothing}")
        assert r.status_code == 404, (nothing, r.text)
        r = await operator.get(f"/applications/{nothing}/subscriptions")
        assert r.status_code == 404, (nothing, r.text)


async def test_list_is_newest_first_with_cursors(operator: httpx.AsyncClient) -> None:
    made = []
    for n in range(3):
        r = await operator.post("/applications", json={"name": f"page {n}"})
        made.append(r.json()["id"])
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        body = (await operator.get("/applications", params=params)).json()
        assert len(body["data"]) <= 2
        seen += [a["id"] for a in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen[:3] == made[::-1]  # newest first
    assert len(seen) == len(set(seen))
    assert "default" in {
        a["uid"]
        for a in (await operator.get("/applications", params={"limit": 250})).json()["data"]
    }
    r = await operator.get("/applications", params={"cursor": "not-a-cursor"})
    assert r.status_code == 422


async def test_flat_routes_act_on_the_default_application(operator: httpx.AsyncClient) -> None:
    sub = await add_subscription(operator, "/subscriptions/", "https://example.com/flat")
    default = (await operator.get("/applications/default")).json()
    assert sub["application_id"] == default["id"]
    listed = (await operator.get("/applications/default/subscriptions")).json()["data"]
    assert sub["id"] in {s["id"] for s in listed}
    assert "secret_key" not in listed[0]


# --- scoped keys --------------------------------------------------------------------


async def test_a_key_sees_and_changes_only_its_own_application(
    operator: httpx.AsyncClient, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    mine = await add_subscription(a.client, "/subscriptions/", "https://example.com/a")
    assert mine["application_id"] == a.id
    theirs = await add_subscription(
        operator, f"/applications/{b.id}/subscriptions", "https://example.com/b"
    )
    assert theirs["application_id"] == b.id

    assert (await a.client.get(f"/subscriptions/{mine['id']}")).status_code == 200
    r = await a.client.patch(f"/subscriptions/{mine['id']}", json={"event_types": ["x"]})
    assert r.status_code == 200
    listed = (await a.client.get("/subscriptions/")).json()
    assert {s["id"] for s in listed} == {mine["id"]}
    assert (await a.client.get(f"/applications/{a.app['uid']}")).status_code == 200

    other = theirs["id"]
    assert (await a.client.get(f"/subscriptions/{other}")).status_code == 404
    assert (
        await a.client.patch(f"/subscriptions/{other}", json={"is_active": False})
    ).status_code == 404
    assert (await a.client.delete(f"/subscriptions/{other}")).status_code == 404
    for path in (
        f"/applications/{b.id}",
        f"/applications/{b.app['uid']}",
        f"/applications/{b.id}/subscriptions",
        f"/applications/{b.id}/api-keys",
    ):
        assert (await a.client.get(path)).status_code == 404, path
    r = await a.client.delete(f"/applications/{b.id}/api-keys/{b.key['id']}")
    assert r.status_code == 404
    # B's subscription is untouched by all of that.
    assert (await operator.get(f"/subscriptions/{other}")).json()["is_active"] is True
    assert (await b.client.get(f"/subscriptions/{other}")).status_code == 200

    # Routes with no meaning inside one application.
    assert (await a.client.get("/applications")).status_code == 403
    assert (await a.client.post("/applications", json={"name": "x"})).status_code == 403
    assert (await a.client.delete(f"/applications/{a.id}")).status_code == 403


async def test_keys_are_listed_without_the_key_and_never_logged(
    operator: httpx.AsyncClient, tenants: tuple[Tenant, Tenant], module_ingest: IngestServer
) -> None:
    a, _ = tenants
    await a.client.get("/subscriptions/")  # used once: last_used_at is set
    r = await operator.get(f"/applications/{a.id}/api-keys")
    assert r.status_code == 200
    listed = r.json()["data"]
    assert [k["id"] for k in listed] == [a.key["id"]]
    assert a.key["key"] not in r.text
    assert a.key["key"].startswith(listed[0]["prefix"])
    assert a.key["key"].startswith("hsk_")
    assert len(a.key["key"]) >= 4 + 43
    assert set(listed[0]) == {
        "id", "application_id", "name", "prefix", "created_at", "expires_at", "last_used_at"
    }  # fmt: skip
    deadline = time.monotonic() + 5
    while (await operator.get(f"/applications/{a.id}/api-keys")).json()["data"][0][
        "last_used_at"
    ] is None:
        assert time.monotonic() < deadline, "last use never recorded"
        await asyncio.sleep(0.05)
    assert a.key["key"] not in module_ingest.log()


async def test_expired_keys_are_refused(operator: httpx.AsyncClient) -> None:
    app = (await operator.post("/applications", json={"name": "expiring"})).json()
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    r = await operator.post(
        f"/applications/{app['id']}/api-keys", json={"name": "k", "expires_at": past}
    )
    assert r.status_code == 422
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    r = await operator.post(
        f"/applications/{app['id']}/api-keys", json={"name": "k", "expires_at": soon.isoformat()}
    )
    assert r.status_code == 201, r.text
    headers = {"Authorization": f"Bearer {r.json()['key']}"}
    assert (await operator.get("/subscriptions/", headers=headers)).status_code == 200
    await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
    assert (await operator.get("/subscriptions/", headers=headers)).status_code == 401


async def test_revocation_is_seen_by_another_ingest_process_within_a_second(
    operator: httpx.AsyncClient,
    tenants: tuple[Tenant, Tenant],
    module_stack: IsolatedStack,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    a, _ = tenants
    with running_ingest(module_stack, tmp_path_factory.mktemp("second")) as second:
        async with httpx.AsyncClient(
            base_url=second.url, timeout=5, headers=a.client.headers
        ) as other:
            assert (await other.get("/subscriptions/")).status_code == 200  # cached there
            r = await operator.delete(f"/applications/{a.id}/api-keys/{a.key['id']}")
            assert r.status_code == 204
            revoked_at = time.monotonic()
            while (await other.get("/subscriptions/")).status_code != 401:
                assert time.monotonic() - revoked_at < 1.0, "revocation not seen within 1 s"
                await asyncio.sleep(0.02)
        assert a.key["key"] not in second.log()
    listed = (await operator.get(f"/applications/{a.id}/api-keys")).json()["data"]
    assert listed == []
    assert (
        await operator.delete(f"/applications/{a.id}/api-keys/{a.key['id']}")
    ).status_code == 404


async def test_deleting_an_application_deactivates_and_revokes_but_keeps_history(
    operator: httpx.AsyncClient, tenants: tuple[Tenant, Tenant]
) -> None:
    a, _ = tenants
    sub = await add_subscription(a.client, "/subscriptions/", "https://example.com/gone")
    assert (await operator.delete(f"/applications/{a.id}")).status_code == 204
    deleted_at = time.monotonic()
    while (await a.client.get("/subscriptions/")).status_code != 401:
        assert time.monotonic() - deleted_at < 1.0, "its key still works after a second"
        await asyncio.sleep(0.02)
    kept = (await operator.get(f"/subscriptions/{sub['id']}")).json()
    assert kept["is_active"] is False
    assert kept["deactivated_reason"] == "application deleted"


# --- delivery -----------------------------------------------------------------------


@pytest.mark.usefixtures("dispatcher")
async def test_events_reach_only_their_own_applications_targets(
    operator: httpx.AsyncClient, tenants: tuple[Tenant, Tenant], target: TargetServer
) -> None:
    a, b = tenants
    await add_subscription(a.client, "/subscriptions/", target.url("/a"))
    await add_subscription(b.client, "/subscriptions/", target.url("/b"))
    await add_subscription(operator, "/subscriptions/", target.url("/default"))
    await asyncio.sleep(1.5)  # past the dispatcher's cache TTL: it holds all three

    sent = {
        "/a": [
            await operator.post(f"/applications/{a.app['uid']}/events", content=b'{"n": 1}',
                                headers={"x-webhook-event": EVENT}),
            await a.client.post("/events", content=b'{"n": 2}', headers={"x-webhook-event": EVENT}),
        ],
        "/b": [
            await b.client.post(f"/applications/{b.id}/events", content=b'{"n": 3}',
                                headers={"x-webhook-event": EVENT}),
        ],
        "/default": [
            await operator.post("/events", content=b'{"n": 4}', headers={"x-webhook-event": EVENT}),
        ],
    }  # fmt: skip
    for answers in sent.values():
        for r in answers:
            assert r.status_code == 202, r.text
    await target.wait_for(4, timeout=20)
    await asyncio.sleep(1.0)  # anything that would cross over has had its chance
    got = {path: sorted(r.body for r in target.received(path)) for path in sent}
    assert got == {
        "/a": [b'{"n": 1}', b'{"n": 2}'],
        "/b": [b'{"n": 3}'],
        "/default": [b'{"n": 4}'],
    }
    # A key cannot publish into another application.
    r = await a.client.post(
        f"/applications/{b.id}/events", content=b"{}", headers={"x-webhook-event": EVENT}
    )
    assert r.status_code == 404

    # Each one's deliveries are its own: A's key finds A's, not B's.
    event_a = sent["/a"][1].json()["event_id"]
    event_b = sent["/b"][0].json()["event_id"]
    deadline = time.monotonic() + 10
    while (await a.client.get(f"/status/events/{event_a}")).json()["deliveries"] == []:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert (await a.client.get(f"/status/events/{event_b}")).status_code == 404
    assert (await operator.get(f"/status/events/{event_b}")).status_code == 200
    delivery_b = (await operator.get(f"/status/events/{event_b}")).json()["deliveries"][0]
    assert (
        await a.client.get(f"/status/deliveries/{delivery_b['delivery_id']}")
    ).status_code == 404
    stats = (await a.client.get("/status/stats", params={"window": "1h"})).json()
    assert stats["deliveries"]["total"] == 2
    assert stats["queue_depth"] is None
    # (a window of its own: the 1 h answer was computed, and cached, at start-up)
    everything = (await operator.get("/status/stats", params={"window": "59m"})).json()
    assert everything["deliveries"]["total"] >= 4


async def test_metadata_and_uids_that_cannot_be_stored_or_addressed_are_422(
    operator: httpx.AsyncClient,
) -> None:
    deep: Any = "leaf"
    for _ in range(300):
        deep = [deep]
    bad = [
        b'{"name": "x", "metadata": {"s": "nul \\u0000 inside"}}',
        b'{"name": "x", "metadata": {"f": NaN}}',
        b'{"name": "x", "metadata": {"k\\u0000": 1}}',
        json.dumps({"name": "x", "metadata": {"deep": deep}}).encode(),
        b'{"name": "x", "uid": ".."}',
        b'{"name": "x", "uid": "."}',
    ]
    for body in bad:
        r = await operator.post(
            "/applications", content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code in (400, 422), (body[:60], r.status_code, r.text)
    # jsonb keeps numbers of any size; they come back as sent.
    big = 123456789012345678901234567890
    r = await operator.post("/applications", json={"name": "ok", "metadata": {"n": big}})
    assert r.status_code == 201
    assert r.json()["metadata"] == {"n": big}
    app = r.json()["id"]
    r = await operator.patch(f"/applications/{app}", json={"metadata": {"s": "\u0000"}})
    assert r.status_code == 422
