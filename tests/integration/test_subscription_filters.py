"""Payload filters end to end: the API validates them, ingest and fan-out honour them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

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
