"""Search (GET /status/events, GET /status/deliveries, /ui/deliveries) on a known data set.

Rows are written straight into the module's own database as the dispatcher's fan-out and
attempt writer would (the tables, not a mock); the expected answer of every filter is
computed here from the same rows, and the real ingest process must return exactly it,
page by page: no row missing, none twice, newest first.
"""

from __future__ import annotations

import asyncio
import base64
import random
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from services.ingest.search import queries
from services.ingest.tenancy import Tenant
from shared.db import asyncpg_dsn, make_engine, make_sessionmaker
from tests.support.broker import IngestServer
from tests.support.stack import IsolatedStack

TYPES = ("order.created", "order.paid", "invoice.sent")
NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Attempt:
    id: uuid.UUID
    created_at: datetime
    delivery_id: uuid.UUID
    event_id: uuid.UUID
    subscription_id: uuid.UUID
    event_type: str
    attempt_number: int
    status: str
    trigger: str
    application_id: uuid.UUID


@dataclass(frozen=True)
class EventRow:
    id: uuid.UUID
    received_at: datetime
    event_type: str
    subscription_id: uuid.UUID | None
    application_id: uuid.UUID


@dataclass
class DataSet:
    apps: dict[str, dict[str, Any]]  # name -> {"id", "uid", "key"}
    subs: dict[str, list[uuid.UUID]]  # app name -> its subscriptions
    events: list[EventRow]
    attempts: list[Attempt]

    def latest(self) -> list[Attempt]:
        """Each delivery's latest attempt, newest first (the deliveries list's order)."""
        by_delivery: dict[uuid.UUID, Attempt] = {}
        for a in self.attempts:
            seen = by_delivery.get(a.delivery_id)
            if seen is None or (a.created_at, a.id) > (seen.created_at, seen.id):
                by_delivery[a.delivery_id] = a
        return sorted(by_delivery.values(), key=lambda a: (a.created_at, a.id), reverse=True)


def build(apps: dict[str, dict[str, Any]]) -> DataSet:
    """~240 deliveries over the last 30 hours (several 6 h partitions) in two applications:
    successes, retries that succeeded, dead letters, deliveries still retrying, a dead
    letter retried by hand since, and groups of rows that share one timestamp (the cursor
    must break the tie by id)."""
    rng = random.Random(16)
    subs = {name: [uuid.uuid4() for _ in range(3)] for name in apps}
    events: list[EventRow] = []
    attempts: list[Attempt] = []
    names = sorted(apps)
    for i in range(240):
        name = names[i % 2] if i % 5 else names[0]  # alpha holds more
        app_id = apps[name]["id"]
        sub = subs[name][rng.randrange(3)]
        # Every 10th event shares its timestamp with the one before it.
        received = NOW - timedelta(minutes=7 * (i - i % 10 // 9), seconds=0)
        event = EventRow(uuid.uuid4(), received, TYPES[rng.randrange(3)], None, app_id)
        events.append(event)
        delivery = uuid.uuid4()
        shape = rng.choice(["ok", "ok", "ok", "retried", "dead", "retrying", "manual"])
        steps = {
            "ok": ["SUCCESS"],
            "retried": ["FAILED_ATTEMPT", "SUCCESS"],
            "dead": ["FAILED_ATTEMPT", "FAILED_ATTEMPT", "FAILURE"],
            "retrying": ["FAILED_ATTEMPT", "FAILED_ATTEMPT"],
            "manual": ["FAILED_ATTEMPT", "FAILURE", "SUCCESS"],
        }[shape]
        for n, status in enumerate(steps):
            manual = shape == "manual" and n == 2
            attempts.append(
                Attempt(
                    id=uuid.uuid4(),
                    created_at=received + timedelta(seconds=1 + 30 * n + (600 if manual else 0)),
                    delivery_id=delivery,
                    event_id=event.id,
                    subscription_id=sub,
                    event_type=event.event_type,
                    attempt_number=1 if manual else n + 1,
                    status=status,
                    trigger="manual-retry" if manual else "ingest",
                    application_id=app_id,
                )
            )
    return DataSet(apps, subs, events, attempts)


async def insert(stack: IsolatedStack, data: DataSet) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(stack.settings()))
    try:
        await conn.executemany(
            "INSERT INTO events (id, received_at, event_type, subscription_id, content_type,"
            " body, application_id) VALUES ($1, $2, $3, $4, 'application/json', $5, $6)",
            [
                (
                    e.id,
                    e.received_at,
                    e.event_type,
                    e.subscription_id,
                    b'{"n": 1}',
                    e.application_id,
                )
                for e in data.events
            ],
        )
        await conn.executemany(
            "INSERT INTO delivery_attempts (id, created_at, delivery_id, event_id,"
            " subscription_id, target_url, event_type, attempt_number, status_code, status,"
            " error_details, trigger, first_received_at, application_id)"
            " VALUES ($1, $2, $3, $4, $5, 'https://t.example/hook', $6, $7, $8, $9, NULL, $10,"
            " $2, $11)",
            [
                (a.id, a.created_at, a.delivery_id, a.event_id, a.subscription_id,
                 a.event_type, a.attempt_number, 200 if a.status == "SUCCESS" else 503,
                 a.status, a.trigger, a.application_id)
                for a in data.attempts
            ],
        )  # fmt: skip
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def data(module_ingest: IngestServer, module_stack: IsolatedStack) -> DataSet:
    async def make() -> DataSet:
        apps = {}
        async with httpx.AsyncClient(
            base_url=module_ingest.url, timeout=15, headers=module_ingest.auth
        ) as op:
            for name in ("alpha", "beta"):
                uid = f"{name}-{uuid.uuid4().hex[:6]}"
                r = await op.post("/applications", json={"uid": uid, "name": name})
                assert r.status_code == 201, r.text
                k = await op.post(f"/applications/{uid}/api-keys", json={"name": name})
                assert k.status_code == 201, k.text
                apps[name] = {"id": uuid.UUID(r.json()["id"]), "uid": uid, "key": k.json()["key"]}
        dataset = build(apps)
        await insert(module_stack, dataset)
        return dataset

    return asyncio.run(make())


async def walk(
    client: httpx.AsyncClient, path: str, params: dict[str, Any], limit: int
) -> tuple[list[dict[str, Any]], int]:
    """Every page of a list: its rows in order, and the number of pages."""
    rows: list[dict[str, Any]] = []
    cursor = None
    for pages in range(1, 1000):
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        r = await client.get(path, params=query)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["data"]) <= limit
        rows.extend(body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            return rows, pages
        assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor), cursor
    raise AssertionError("the list never ended")


def iso(when: datetime) -> str:
    return when.isoformat()


def delivery_cases(data: DataSet) -> list[tuple[dict[str, Any], Any]]:
    alpha, beta = data.apps["alpha"], data.apps["beta"]
    sub = data.subs["alpha"][1]
    since, until = NOW - timedelta(hours=20), NOW - timedelta(hours=4)
    return [
        ({}, lambda a: True),
        ({"status": "SUCCESS"}, lambda a: a.status == "SUCCESS"),
        ({"status": "FAILED_ATTEMPT"}, lambda a: a.status == "FAILED_ATTEMPT"),
        ({"status": "FAILURE"}, lambda a: a.status == "FAILURE"),
        ({"subscription_id": str(sub)}, lambda a: a.subscription_id == sub),
        ({"event_type": "order.paid"}, lambda a: a.event_type == "order.paid"),
        ({"application_id": str(beta["id"])}, lambda a: a.application_id == beta["id"]),
        (
            {"since": iso(since), "until": iso(until)},
            lambda a: since <= a.created_at < until,
        ),
        (
            {
                "status": "SUCCESS",
                "event_type": "invoice.sent",
                "application_id": str(alpha["id"]),
                "since": iso(since),
            },
            lambda a: (
                a.status == "SUCCESS"
                and a.event_type == "invoice.sent"
                and a.application_id == alpha["id"]
                and a.created_at >= since
            ),
        ),
    ]


async def test_every_delivery_filter_pages_through_exactly_the_expected_deliveries(
    data: DataSet, operator: httpx.AsyncClient
) -> None:
    latest = data.latest()
    assert {a.status for a in latest} == {"SUCCESS", "FAILED_ATTEMPT", "FAILURE"}
    assert any(a.trigger == "manual-retry" for a in latest)  # a dead letter retried by hand
    for params, keep in delivery_cases(data):
        expected = [a for a in latest if keep(a)]
        assert expected, params
        rows, pages = await walk(operator, "/status/deliveries", params, limit=7)
        assert [uuid.UUID(r["delivery_id"]) for r in rows] == [a.delivery_id for a in expected], (
            params
        )
        assert pages == -(-len(expected) // 7), params
        first = rows[0]
        top = expected[0]
        assert first["status"] == top.status
        assert first["attempt_number"] == top.attempt_number
        assert first["application_id"] == str(top.application_id)
        assert datetime.fromisoformat(first["latest_attempt_at"]) == top.created_at


async def test_every_event_filter_pages_through_exactly_the_expected_events(
    data: DataSet, operator: httpx.AsyncClient
) -> None:
    events = sorted(data.events, key=lambda e: (e.received_at, e.id), reverse=True)
    assert len({e.received_at for e in events}) < len(events)  # ties the cursor must break
    beta = data.apps["beta"]["id"]
    since, until = NOW - timedelta(hours=10), NOW - timedelta(hours=2)
    cases: list[tuple[dict[str, Any], Any]] = [
        ({}, lambda e: True),
        ({"event_type": "order.created"}, lambda e: e.event_type == "order.created"),
        ({"application_id": str(beta)}, lambda e: e.application_id == beta),
        ({"since": iso(since), "until": iso(until)}, lambda e: since <= e.received_at < until),
        (
            {"event_type": "invoice.sent", "application_id": str(beta)},
            lambda e: e.event_type == "invoice.sent" and e.application_id == beta,
        ),
    ]
    for params, keep in cases:
        expected = [e for e in events if keep(e)]
        assert expected, params
        rows, _ = await walk(operator, "/status/events", params, limit=9)
        assert [uuid.UUID(r["event_id"]) for r in rows] == [e.id for e in expected], params
    one = (await operator.get("/status/events", params={"limit": 1})).json()["data"][0]
    assert one == {
        "event_id": str(events[0].id),
        "event_type": events[0].event_type,
        "application_id": str(events[0].application_id),
        "subscription_id": None,
        "received_at": one["received_at"],
        "content_type": "application/json",
        "size_bytes": 8,
    }


async def test_a_page_looks_at_a_bounded_number_of_attempts_and_the_walk_stays_exact(
    data: DataSet, module_stack: IsolatedStack
) -> None:
    """With a budget of 5 candidates, ``status=FAILED_ATTEMPT`` (whose candidates are
    mostly superseded) gives short and empty pages that still add up to the answer."""
    engine = make_engine(module_stack.settings(), pool_size=1)
    operator = Tenant(make_sessionmaker(engine), None, operator=True)
    try:
        for status in ("FAILED_ATTEMPT", "FAILURE", None):
            filters = queries.DeliveryFilters(status=status)
            expected = [a.delivery_id for a in data.latest() if status in (None, a.status)]
            seen: list[uuid.UUID] = []
            sizes = []
            cursor = None
            while True:
                async with operator.session() as session:
                    rows, cursor = await queries.latest_attempts(
                        session, filters, cursor, limit=4, budget=5
                    )
                seen.extend(r.delivery_id for r in rows)
                sizes.append(len(rows))
                if cursor is None:
                    break
            assert seen == expected, status
            if status == "FAILED_ATTEMPT":
                assert 0 in sizes  # a page whose candidates were all superseded
    finally:
        await engine.dispose()


async def test_a_scoped_key_finds_only_its_own_applications_rows(
    data: DataSet, module_ingest: IngestServer
) -> None:
    alpha, beta = data.apps["alpha"], data.apps["beta"]
    mine = [a.delivery_id for a in data.latest() if a.application_id == beta["id"]]
    my_events = {e.id for e in data.events if e.application_id == beta["id"]}
    async with httpx.AsyncClient(
        base_url=module_ingest.url, timeout=15, headers={"Authorization": f"Bearer {beta['key']}"}
    ) as client:
        rows, _ = await walk(client, "/status/deliveries", {}, limit=50)
        assert [uuid.UUID(r["delivery_id"]) for r in rows] == mine
        rows, _ = await walk(client, "/status/events", {}, limit=50)
        assert {uuid.UUID(r["event_id"]) for r in rows} == my_events
        # Another application's ids in a filter match nothing.
        for path, params in (
            ("/status/deliveries", {"application_id": str(alpha["id"])}),
            ("/status/deliveries", {"subscription_id": str(data.subs["alpha"][0])}),
            ("/status/events", {"application_id": str(alpha["id"])}),
        ):
            r = await client.get(path, params=params)
            assert r.status_code == 200, r.text
            assert r.json() == {"data": [], "next_cursor": None}
        # A cursor taken from the operator's walk shows no more than the key's own rows.
        r = await client.get("/status/deliveries", params={"status": "FAILURE"})
        assert all(row["application_id"] == str(beta["id"]) for row in r.json()["data"])


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("path", ["/status/deliveries", "/status/events"])
async def test_bad_cursors_and_filters_are_a_422_that_says_what_is_wrong(
    data: DataSet, operator: httpx.AsyncClient, path: str
) -> None:
    first = (await operator.get(path, params={"limit": 2})).json()
    good = first["next_cursor"]
    assert good is not None
    tampered = [
        "not a cursor",
        "%%%",
        good[:-3],
        good + "AAAA",
        _b64(b"yesterday|" + str(uuid.uuid4()).encode()),
        _b64(b"2026-12-04T10:00:00|" + str(uuid.uuid4()).encode()),  # no offset
        _b64(b"2026-12-04T10:00:00+00:00|not-a-uuid"),
        _b64(b"\xff\xfe\x00"),
        "A" * 201,
    ]
    for cursor in tampered:
        r = await operator.get(path, params={"cursor": cursor})
        assert r.status_code == 422, (cursor, r.status_code, r.text)
        assert "cursor" in r.text
    bad_filters: list[dict[str, str | int]] = [
        {"limit": 0},
        {"limit": 501},
        {"since": "yesterday"},
        {"since": "2026-12-04T10:00:00"},  # RFC 3339 needs an offset
        {"since": iso(NOW), "until": iso(NOW - timedelta(hours=1))},
        {"application_id": "nope"},
        # No event type looks like these; PostgreSQL refused the NUL with a 500.
        {"event_type": "order\x00paid"},
        {"event_type": "order paid"},
    ]
    if path == "/status/deliveries":
        bad_filters += [{"status": "LOST"}, {"subscription_id": "1"}]
    for params in bad_filters:
        r = await operator.get(path, params=params)
        assert r.status_code == 422, (params, r.status_code, r.text)
    anonymous = await operator.get(path, headers={"Authorization": "Bearer wrong"})
    assert anonymous.status_code == 401


async def test_the_delivery_routes_by_id_still_answer(
    data: DataSet, operator: httpx.AsyncClient
) -> None:
    top = data.latest()[0]
    r = await operator.get(f"/status/deliveries/{top.delivery_id}")
    assert r.status_code == 200, r.text
    assert r.json()["latest_status"] == top.status
    r = await operator.get(f"/status/events/{top.event_id}")
    assert r.status_code == 200, r.text


def _login(client: httpx.Client, api_key: str) -> None:
    form = client.get("/ui/login")
    found = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert found, form.text
    r = client.post("/ui/login", data={"csrf": found.group(1), "api_key": api_key})
    assert r.status_code == 303, r.text


def test_the_dashboard_deliveries_page_filters_and_pages_like_the_api(
    data: DataSet, module_ingest: IngestServer
) -> None:
    beta = data.apps["beta"]
    expected = [
        a.delivery_id
        for a in data.latest()
        if a.application_id == beta["id"] and a.status != "SUCCESS"
    ]
    assert expected
    with httpx.Client(base_url=module_ingest.url, timeout=15) as client:
        assert client.get("/ui/deliveries").headers.get("location", "").startswith("/ui/login")
        _login(client, module_ingest.api_key)
        overview = client.get("/ui")
        assert 'href="/ui/deliveries"' in overview.text  # in the navigation
        seen: list[uuid.UUID] = []
        for status in ("FAILED_ATTEMPT", "FAILURE"):
            url: str | None = f"/ui/deliveries?status={status}&application={beta['uid']}"
            while url is not None:
                page = client.get(url)
                assert page.status_code == 200, page.text
                assert f'value="{beta["uid"]}"' in page.text  # the form keeps the filter
                seen.extend(
                    uuid.UUID(d)
                    for d in re.findall(r'href="/ui/deliveries/([0-9a-f-]{36})"', page.text)
                )
                older = re.search(r'href="(/ui/deliveries\?[^"]+)" id="older"', page.text)
                url = older.group(1).replace("&amp;", "&") if older else None
        assert sorted(seen) == sorted(expected)
        assert len(seen) == len(set(seen))
        for query in ("status=LOST", "event_type=order%00paid"):
            bad = client.get(f"/ui/deliveries?{query}")
            assert bad.status_code == 422, (query, bad.text)
        unknown = client.get("/ui/deliveries?application=no-such-app")
        assert unknown.status_code == 404
