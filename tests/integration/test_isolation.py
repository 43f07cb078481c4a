"""Tenant isolation, generated from the OpenAPI document.

Every operation the API documents is called with application A's key. Where it takes an
id (in its path or its query), it gets the id of application B's object of that kind; the
answer must not be a 2xx and must not carry a byte of B's data. Operations without an id
are listed (``NO_ID``) and called too: they may answer 2xx, but never with B's data.
``PUBLIC`` lists the operations that no API key guards. A new operation that is none of
these fails the test until it is covered: isolation is checked for every route, not for
the routes someone remembered.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select, text, update

from services.ingest.tenancy import Tenant
from shared.db import make_engine, make_sessionmaker
from shared.models import Application, Subscription
from tests.support.broker import IngestServer
from tests.support.stack import IsolatedStack

# Authenticated by a subscription's signature or by nothing: not a tenancy question.
PUBLIC = {
    ("post", "/ingest/{subscription_id}"),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
}
# Operations that name no object: a key acts inside its own application (or is refused).
NO_ID = {
    ("post", "/events"),
    ("post", "/subscriptions/"),
    ("get", "/subscriptions/"),
    ("post", "/applications"),
    ("get", "/applications"),
    ("get", "/status/stats"),
    ("post", "/tools/signature-generator"),
}
# Bodies for operations that take one; an operation with a request body missing here
# fails the test, so a new route cannot slip past without a call.
BODIES: dict[tuple[str, str], Any] = {
    ("post", "/events"): {"probe": 1},
    ("post", "/applications/{app}/events"): {"probe": 1},
    ("post", "/subscriptions/"): {"target_url": "https://example.com/a-probe"},
    ("patch", "/subscriptions/{subscription_id}"): {"is_active": False},
    ("post", "/subscriptions/{subscription_id}/secret/rotate"): {"overlap_seconds": 0},
    ("post", "/subscriptions/{subscription_id}/test"): {"event_type": "probe"},
    ("post", "/subscriptions/{subscription_id}/backfill"): {"since": "2026-01-01T00:00:00Z"},
    ("post", "/applications"): {"name": "probe"},
    ("patch", "/applications/{app}"): {"name": "hijacked"},
    ("post", "/applications/{app}/subscriptions"): {"target_url": "https://example.com/a-probe"},
    ("post", "/applications/{app}/api-keys"): {"name": "stolen"},
    ("post", "/applications/{app}/portal-links"): {"expires_in": 60},
    ("post", "/tools/signature-generator"): {"payload": {}, "secret_key": "probe"},
}
HEADERS = {"x-webhook-event": "order.created"}


class Objects:
    """One application's objects of every kind an API path can name."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}
        self.data: list[str] = []  # strings that appear in no other application's answers
        self.key = ""
        self.uid = ""


async def make_application(op: httpx.AsyncClient, name: str) -> Objects:
    objs = Objects()
    uid = f"{name}-{uuid.uuid4().hex[:8]}"
    app = (await op.post("/applications", json={"uid": uid, "name": f"{name} corp"})).json()
    key = (await op.post(f"/applications/{uid}/api-keys", json={"name": f"{name}-key"})).json()
    target = f"https://{name}-{uuid.uuid4().hex[:6]}.example.com/hook"
    sub = (
        await op.post(
            f"/applications/{uid}/subscriptions",
            json={"target_url": target, "secret_key": f"{name}-secret", "event_types": ["x"]},
        )
    ).json()
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    backfill = (await op.post(f"/subscriptions/{sub['id']}/backfill", json={"since": since})).json()
    objs.key = key["key"]
    objs.uid = uid
    objs.ids = {
        "app": app["id"],
        # The search routes take it as a filter (GET /status/events?application_id=).
        "application_id": app["id"],
        "subscription_id": sub["id"],
        "key_id": key["id"],
        "delivery_id": str(uuid.uuid4()),
        "event_id": str(uuid.uuid4()),
        "backfill_id": backfill["id"],
    }
    objs.data = [*objs.ids.values(), uid, f"{name} corp", target, key["prefix"], key["key"]]
    return objs


async def add_history(stack: IsolatedStack, objs: Objects) -> None:
    """An event and a dead-lettered delivery of it, as the dispatcher would record them."""
    engine = make_engine(stack.settings(), pool_size=1)
    now = datetime.now(UTC)
    ids = {k: uuid.UUID(v) for k, v in objs.ids.items()}
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO events (id, received_at, event_type, subscription_id,"
                    " content_type, body, application_id)"
                    " VALUES (:e, :now, 'x', :s, 'application/json', :body, :a)"
                ),
                {"e": ids["event_id"], "now": now, "s": ids["subscription_id"],
                 "body": b'{"secret": "b-payload"}', "a": ids["app"]},
            )  # fmt: skip
            await conn.execute(
                text(
                    "INSERT INTO delivery_attempts (id, created_at, delivery_id, event_id,"
                    " subscription_id, target_url, event_type, attempt_number, status,"
                    " error_details, trigger, first_received_at, application_id)"
                    " VALUES (:id, :now, :d, :e, :s, 'https://b.example/', 'x', 1, 'FAILURE',"
                    " 'b-error', 'ingest', :now, :a)"
                ),
                {"id": uuid.uuid4(), "now": now, "d": ids["delivery_id"], "e": ids["event_id"],
                 "s": ids["subscription_id"], "a": ids["app"]},
            )  # fmt: skip
    finally:
        await engine.dispose()
    objs.data.append("b-payload")


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            yield method, path, op


async def test_no_route_shows_or_changes_another_applications_objects(
    module_ingest: IngestServer, module_stack: IsolatedStack
) -> None:
    async with httpx.AsyncClient(
        base_url=module_ingest.url, timeout=15, headers=module_ingest.auth
    ) as op:
        a = await make_application(op, "alpha")
        b = await make_application(op, "beta")
        await add_history(module_stack, b)
        spec = (await op.get("/openapi.json")).json()

    covered: dict[str, list[str]] = {"by id": [], "no id": [], "public": []}
    uncovered = []
    leaks = []
    headers = {"Authorization": f"Bearer {a.key}", **HEADERS}
    async with httpx.AsyncClient(base_url=module_ingest.url, timeout=15, headers=headers) as client:
        for method, path, op in operations(spec):
            name = f"{method.upper()} {path}"
            if (method, path) in PUBLIC:
                covered["public"].append(name)
                continue
            path_ids = re.findall(r"{(\w+)}", path)
            query_ids = [
                p["name"]
                for p in op.get("parameters", [])
                if p["in"] == "query" and p["name"] in b.ids
            ]
            if "requestBody" in op and (method, path) not in BODIES:
                uncovered.append(f"{name}: no body in BODIES")
                continue
            if any(p not in b.ids for p in path_ids):
                uncovered.append(f"{name}: no object of B for {path_ids}")
                continue
            if not path_ids and not query_ids and (method, path) not in NO_ID:
                uncovered.append(f"{name}: takes no id and is not listed in NO_ID")
                continue
            # {app} is an id or a uid: both are tried. A query id is tried, and left out
            # (an unfiltered list must not show B's objects either).
            urls = {path.format(**b.ids), path.format(**{**b.ids, "app": b.uid})}
            variants = [{q: b.ids[q] for q in query_ids}, {}] if query_ids else [{}]
            for url, params in ((u, p) for u in sorted(urls) for p in variants):
                body = BODIES.get((method, path))
                r = await client.request(method, url, params=params, json=body)
                if path_ids and r.is_success:
                    leaks.append(f"{method.upper()} {url} answered {r.status_code}")
                shown = [d for d in b.data if d in r.text]
                if shown:
                    leaks.append(f"{method.upper()} {url} showed B's {shown}: {r.text[:300]}")
                if r.status_code >= 500:
                    leaks.append(f"{method.upper()} {url} answered {r.status_code}")
            covered["by id" if path_ids or query_ids else "no id"].append(name)

    assert not uncovered, "routes the isolation test does not cover:\n" + "\n".join(uncovered)
    assert not leaks, "\n".join(leaks)
    print({k: len(v) for k, v in covered.items()})  # the count of what was checked
    assert len(covered["by id"]) >= 14
    assert set(NO_ID) <= {
        (n.split(" ", 1)[0].lower(), n.split(" ", 1)[1]) for n in covered["no id"]
    }

    # Nothing of B's changed: its key, subscription and application still work.
    async with httpx.AsyncClient(
        base_url=module_ingest.url, timeout=15, headers={"Authorization": f"Bearer {b.key}"}
    ) as bc:
        sub = (await bc.get(f"/subscriptions/{b.ids['subscription_id']}")).json()
        assert sub["is_active"] is True
        assert sub["event_types"] == ["x"]
        app = (await bc.get(f"/applications/{b.ids['app']}")).json()
        assert app["name"] == "beta corp"
        keys = (await bc.get(f"/applications/{b.ids['app']}/api-keys")).json()["data"]
        assert [k["id"] for k in keys] == [b.ids["key_id"]]
    assert a.key not in module_ingest.log()
    assert b.key not in module_ingest.log()


async def test_a_tenant_session_neither_reads_nor_writes_another_applications_rows(
    module_stack: IsolatedStack,
) -> None:
    """The mechanism itself, below the routes: ORM reads, bulk UPDATE/DELETE and new rows."""
    engine = make_engine(module_stack.settings(), pool_size=1)
    sessions = make_sessionmaker(engine)
    a_id, b_id = uuid.uuid4(), uuid.uuid4()
    try:
        async with sessions.begin() as session:
            session.add_all([Application(id=a_id, name="a"), Application(id=b_id, name="b")])
            await session.flush()
            session.add(Subscription(application_id=b_id, target_url="https://b.example/"))
        a = Tenant(sessions, a_id, operator=False)
        async with a.begin() as session:
            assert (await session.execute(select(Subscription))).scalars().all() == []
            assert (await session.execute(select(Application))).scalars().all()[0].id == a_id
            changed = await session.execute(
                update(Subscription).values(is_active=False).returning(Subscription.id)
            )
            assert changed.all() == []
            gone = await session.execute(delete(Subscription).returning(Subscription.id))
            assert gone.all() == []
        with pytest.raises(RuntimeError, match="another application"):
            async with a.begin() as session:
                session.add(Subscription(application_id=b_id, target_url="https://x.example/"))
        async with sessions() as session:
            query = select(Subscription).where(Subscription.application_id.in_([a_id, b_id]))
            rows = (await session.execute(query)).scalars().all()
            assert [(s.application_id, s.is_active) for s in rows] == [(b_id, True)]
    finally:
        await engine.dispose()
