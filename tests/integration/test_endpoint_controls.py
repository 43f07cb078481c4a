"""Endpoint controls end to end (filters, custom headers, secret rotation, rate limits): the API
validates them; ingest, fan-out and delivery honour them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from aiokafka.partitioner import DefaultPartitioner
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.support.procs import ServiceProcess, running_service
from tests.support.stack import IsolatedStack
from tests.support.targets import TargetServer

EVENT = "invoice.paid"
FILTER = {"data.amount": {"$gte": 100}, "$or": [{"data.currency": "EUR"}, {"data.vip": True}]}


@pytest.fixture(scope="module")
def dispatcher(
    module_stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    with running_service(module_stack, "dispatcher", tmp_path_factory.mktemp("dispatcher")) as p:
        yield p


async def test_bad_filters_are_422_naming_the_place(operator: httpx.AsyncClient) -> None:
    for bad, where in (
        ({"$bogus": 1}, "$bogus"),
        ({"data.amount": {"$gt": 1, "$regex": "x"}}, "data.amount.$regex"),
        ({f"k{n}": n for n in range(51)}, "conditions"),
        ([1], "dictionary"),
    ):
        r = await operator.post(
            "/subscriptions/", json={"target_url": "https://e.example/", "filter": bad}
        )
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"][:2] == ["body", "filter"]
        assert where in r.json()["detail"][0]["msg"]


async def test_targeted_ingest_answers_filtered_for_a_body_that_does_not_match(
    operator: httpx.AsyncClient,
) -> None:
    r = await operator.post(
        "/subscriptions/",
        json={"target_url": "https://e.example/", "event_types": [EVENT], "filter": FILTER},
    )
    sub = r.json()
    assert sub["filter"] == FILTER
    assert (await operator.get(f"/subscriptions/{sub['id']}")).json()["filter"] == FILTER
    headers = {"x-webhook-event": EVENT}
    url = f"/ingest/{sub['id']}"
    r = await operator.post(
        url, content=b'{"data": {"amount": 150, "currency": "EUR"}}', headers=headers
    )
    assert r.status_code == 202, r.text
    for body in (b'{"data": {"amount": 50, "currency": "EUR"}}', b"[1, 2]", b'"text"'):
        r = await operator.post(url, content=body, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["reason"] == "filter_not_matched"
    r = await operator.patch(f"/subscriptions/{sub['id']}", json={"filter": None})
    assert r.json()["filter"] is None
    assert (await operator.post(url, content=b"[1]", headers=headers)).status_code == 202


@pytest.mark.usefixtures("dispatcher")
async def test_fanout_delivers_only_to_subscriptions_whose_filter_matches(
    operator: httpx.AsyncClient, target: TargetServer
) -> None:
    app = (await operator.post("/applications", json={"name": "filters"})).json()["id"]
    for path, body_filter in (("/all", None), ("/big-eur", FILTER), ("/vip", {"data.vip": True})):
        r = await operator.post(
            f"/applications/{app}/subscriptions",
            json={"target_url": target.url(path), "event_types": [EVENT], "filter": body_filter},
        )
        assert r.status_code == 201, r.text
    bodies = [
        b'{"data": {"amount": 150, "currency": "EUR"}}',  # /all, /big-eur
        b'{"data": {"amount": 150, "currency": "USD", "vip": true}}',  # all three
        b'{"data": {"amount": 10, "currency": "EUR"}}',  # /all
        b"[]",  # /all: not an object, no filter matches it
    ]
    for body in bodies:
        r = await operator.post(
            f"/applications/{app}/events", content=body, headers={"x-webhook-event": EVENT}
        )
        assert r.status_code == 202
    await target.wait_for(7, timeout=20)
    await asyncio.sleep(1.0)
    got = {p: sorted(r.body for r in target.received(p)) for p in ("/all", "/big-eur", "/vip")}
    assert got == {
        "/all": sorted(bodies),
        "/big-eur": sorted(bodies[:2]),
        "/vip": [bodies[1]],
    }


async def test_custom_headers_are_validated(operator: httpx.AsyncClient) -> None:
    base = {"target_url": "https://e.example/"}
    for bad in (
        {"webhook-id": "x"},
        {"X-Webhook-Event": "x"},
        {"Content-Type": "text/plain"},
        {"User-Agent": "me"},
        {"traceparent": "00-1"},
        {"X-Hub-Signature-256": "sha256=0"},
        {"bad name": "x"},
        {"X-A": "line\r\nbreak"},
        {"X-A": "é"},
        {"X-A": "v" * 1025},
        {"X-A": "1", "x-a": "2"},
        {f"X-{n}": "v" for n in range(21)},
    ):
        r = await operator.post("/subscriptions/", json={**base, "headers": bad})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"][0]["loc"][:2] == ["body", "headers"]
    r = await operator.post("/subscriptions/", json={**base, "headers": {"X-Team": "billing"}})
    assert r.status_code == 201
    assert r.json()["headers"] == {"X-Team": "billing"}


@pytest.mark.usefixtures("dispatcher")
async def test_custom_headers_arrive_with_every_delivery(
    operator: httpx.AsyncClient, target: TargetServer
) -> None:
    headers = {"Authorization": "Bearer receiver-token", "X-Team": "billing"}
    r = await operator.post(
        "/subscriptions/",
        json={"target_url": target.url("/h"), "secret_key": "s3cret", "headers": headers},
    )
    sub = r.json()
    r = await operator.post(f"/ingest/{sub['id']}", content=b"{}", headers=_signed(b"{}"))
    assert r.status_code == 202, r.text
    (got,) = await target.wait_for(1, path="/h", timeout=20)
    assert got.headers["authorization"] == "Bearer receiver-token"
    assert got.headers["x-team"] == "billing"
    assert got.headers["webhook-id"] == r.json()["delivery_id"]


def _signed(body: bytes) -> dict[str, str]:
    digest = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    return {"x-hub-signature-256": f"sha256={digest}"}


@pytest.mark.usefixtures("dispatcher")
async def test_during_a_rotation_both_secrets_sign_and_verify_then_only_the_new(
    operator: httpx.AsyncClient, target: TargetServer
) -> None:
    old = "whsec_" + base64.b64encode(b"o" * 32).decode()
    r = await operator.post(
        "/subscriptions/", json={"target_url": target.url("/rot"), "secret_key": old}
    )
    sub_id = r.json()["id"]
    r = await operator.post(f"/subscriptions/{sub_id}/secret/rotate", json={"overlap_seconds": 3})
    assert r.status_code == 200, r.text
    rotated = r.json()
    new = rotated["secret_key"]
    assert new.startswith("whsec_")
    assert len(base64.b64decode(new.removeprefix("whsec_"))) == 32
    assert rotated["previous_secret_expires_at"] is not None
    shown = (await operator.get(f"/subscriptions/{sub_id}")).json()
    assert "secret_key" not in shown
    assert shown["secret_rotated_at"] == rotated["secret_rotated_at"]

    async def send(secret: str) -> httpx.Response:
        body = b'{"n": 1}'
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return await operator.post(
            f"/ingest/{sub_id}", content=body, headers={"x-hub-signature-256": f"sha256={digest}"}
        )

    for secret in (new, old):  # ingest accepts either during the overlap
        assert (await send(secret)).status_code == 202
    for got in await target.wait_for(2, path="/rot", timeout=20):
        assert " " in got.headers["webhook-signature"]  # v1,<new> v1,<old>
        for secret in (new, old):
            Webhook(secret).verify(got.body, dict(got.headers))

    expires = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    assert (await send(old)).status_code == 401
    assert (await send(new)).status_code == 202
    (*_, last) = await target.wait_for(3, path="/rot", timeout=20)
    assert " " not in last.headers["webhook-signature"]
    Webhook(new).verify(last.body, dict(last.headers))
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(last.body, dict(last.headers))


def deliveries_partition(subscription_id: str, partitions: int) -> int:
    """The partition the dispatcher publishes a subscription's jobs to (keyed by its id)."""
    chosen: int = DefaultPartitioner()(subscription_id.encode(), list(range(partitions)), [])
    return chosen


@pytest.mark.usefixtures("dispatcher")
async def test_a_rate_limited_subscription_is_paced_and_its_neighbour_is_not(
    operator: httpx.AsyncClient, target: TargetServer, module_stack: IsolatedStack
) -> None:
    partitions = module_stack.settings().deliveries_partitions
    app = (await operator.post("/applications", json={"name": "rates"})).json()["id"]

    async def add(path: str, rate: int | None) -> str:
        r = await operator.post(
            f"/applications/{app}/subscriptions",
            json={"target_url": target.url(path), "event_types": ["paced"], "rate_limit": rate},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    limited = await add("/limited", 5)
    # A neighbour whose jobs share the limited one's partition: the one that must not wait.
    while True:
        neighbour = await add("/neighbour", None)
        if deliveries_partition(neighbour, partitions) == deliveries_partition(limited, partitions):
            break
        await operator.delete(f"/subscriptions/{neighbour}")
    assert (await operator.get(f"/subscriptions/{limited}")).json()["rate_limit"] == 5
    bad = await operator.post(
        "/subscriptions/", json={"target_url": "https://e.example/", "rate_limit": 0}
    )
    assert bad.status_code == 422

    started = time.time()
    answers = await asyncio.gather(
        *(
            operator.post(
                f"/applications/{app}/events",
                content=b'{"n": %d}' % n,
                headers={"x-webhook-event": "paced"},
            )
            for n in range(50)
        )
    )
    assert all(r.status_code == 202 for r in answers)
    await target.wait_for(50, path="/neighbour", timeout=30)
    neighbour_done = max(r.at for r in target.received("/neighbour")) - started
    got = await target.wait_for(50, path="/limited", timeout=60)
    arrivals = sorted(r.at for r in got)
    assert neighbour_done < 5.0, f"the neighbour waited {neighbour_done:.1f} s"
    assert arrivals[-1] - arrivals[0] >= 8.5, arrivals[-1] - arrivals[0]
    # Starts are paced to 5 in any second; arrivals add the dispatcher's own queueing on
    # top (a busy loop can push one second's five next to the following five), so the
    # check on arrivals allows two seconds' worth in one: without the limit all 50 land
    # within a fraction of a second.
    busiest = max(sum(1 for b in arrivals if a <= b < a + 1.0) for a in arrivals)
    assert busiest <= 10, busiest
    await asyncio.sleep(1.0)
    assert len(target.received("/limited")) == 50  # none twice, none lost
    assert len({r.body for r in target.received("/limited")}) == 50


@pytest.mark.usefixtures("dispatcher")
async def test_a_test_event_reaches_only_its_subscription_whatever_its_types_and_filter(
    operator: httpx.AsyncClient, target: TargetServer
) -> None:
    narrow = {"event_types": ["order.paid"], "filter": {"never": {"$exists": True}}}
    r = await operator.post("/subscriptions/", json={"target_url": target.url("/t"), **narrow})
    sub = r.json()["id"]
    other = await operator.post(
        "/subscriptions/", json={"target_url": target.url("/other"), "event_types": []}
    )
    assert other.status_code == 201
    r = await operator.post(f"/subscriptions/{sub}/test", json={"event_type": "ping.test"})
    assert r.status_code == 202, r.text
    answer = r.json()
    (got,) = await target.wait_for(1, path="/t", timeout=20)
    assert got.headers["webhook-id"] == answer["delivery_id"]
    assert got.headers["x-webhook-event"] == "ping.test"
    assert json.loads(got.body)["type"] == "ping.test"
    status = None
    for _ in range(100):
        status = await operator.get(f"/status/deliveries/{answer['delivery_id']}")
        if status.status_code == 200:
            break
        await asyncio.sleep(0.1)
    assert status is not None
    assert status.json()["latest_attempt"]["trigger"] == "test"
    assert (await operator.post(f"/subscriptions/{sub}/test")).status_code == 202  # no body
    await target.wait_for(2, path="/t", timeout=20)
    await asyncio.sleep(0.5)
    assert target.received("/other") == []  # to this subscription only

    await operator.patch(f"/subscriptions/{sub}", json={"is_active": False})
    assert (await operator.post(f"/subscriptions/{sub}/test")).status_code == 409
