"""The consumer portal in headless Chromium: real ingest, dispatcher and retry scheduler
processes, real local HTTP targets (127.0.0.1 only), Kafka, PostgreSQL and Redis.

An operator makes a one-use link through the API; the browser opens it and acts as that
application's customer. Screenshots of every portal page land in
test-artifacts/browser/portal-*.png.
"""

from __future__ import annotations

import html
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from aiohttp import web
from fastapi.routing import iter_route_contexts
from playwright.async_api import Browser, BrowserContext, Dialog, Frame, Page, expect
from sqlalchemy import func, insert, select

from services.ingest.app import create_app
from shared.db import make_engine, make_sessionmaker
from shared.models import DeliveryAttempt, Event, Subscription
from shared.records import TEST_EVENT_TYPE, delivery_id_for
from shared.signing import standard_webhooks_key, standard_webhooks_signature
from tests.browser.conftest import csrf_of, screenshot
from tests.support.broker import IngestServer, running_ingest
from tests.support.procs import ServiceProcess, free_port
from tests.support.stack import IsolatedStack
from tests.support.targets import LOOPBACK, TargetServer

pytestmark = pytest.mark.slow

PORTAL = "/portal"
# Routes whose path parameter is not an id of an application's object.
NOT_AN_OBJECT = {
    # A link's token is a credential: opening another application's link is how that
    # application's customer gets in, not a way around isolation (test_portal_links.py).
    ("GET", "/portal/login/{token}"),
}
# Plausible form fields, so that a POST gets past validation to the object lookup.
FORM = {
    "target_url": "https://example.com/portal-probe",
    "event_types": "",
    "active": "false",
    "since": "2020-01-01T00:00",
}


@pytest.fixture(scope="module")
def retry_scheduler(
    module_stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(
        module_stack, "retry_scheduler", log_dir=tmp_path_factory.mktemp("portal-retry")
    )
    yield proc
    assert proc.stop() == 0, proc.log()[-3000:]


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        yield server


@pytest.fixture
async def operator(ingest: IngestServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ingest.url, timeout=15, headers=ingest.auth) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def new_application(operator: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    r = await operator.post("/applications", json={"name": unique("app"), **fields})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def portal_link(operator: httpx.AsyncClient, app_id: str) -> str:
    r = await operator.post(f"/applications/{app_id}/portal-links", json={"expires_in": 600})
    assert r.status_code == 201, r.text
    return str(r.json()["url"])


async def open_portal(page: Page, link: str) -> None:
    response = await page.goto(link)
    assert response is not None
    assert response.status == 200
    assert page.url.endswith(PORTAL), page.url
    await expect(page.locator("h1")).to_have_text("Endpoints")


def no_dialogs(page: Page) -> list[str]:
    """Every alert/confirm/prompt the page opens (each one dismissed at once)."""
    opened: list[str] = []

    async def on_dialog(dialog: Dialog) -> None:
        opened.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    return opened


async def add_endpoint(page: Page, url: str, event_types: str = "") -> tuple[str, str]:
    """Through the form; the endpoint's id and its secret (from the one page showing it)."""
    await page.goto("/portal/endpoints/new")
    await page.fill("#target_url", url)
    await page.fill("#event_types", event_types)
    await page.click("button:has-text('Add endpoint')")
    await expect(page.locator("h1")).to_have_text("Endpoint added")
    secret = (await page.locator("#secret").inner_text()).strip()
    assert secret.startswith("whsec_")
    href = await page.locator("a:has-text('Go to the endpoint')").get_attribute("href")
    assert href is not None
    return href.rsplit("/", 1)[1], secret


async def reload_until_text(page: Page, selector: str, text: str, timeout: float = 40) -> None:
    """Attempt rows are written after the target answered: reload until one says ``text``."""
    deadline = time.monotonic() + timeout
    while text not in " ".join(await page.locator(selector).all_inner_texts()):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {selector} on {page.url}"
        await page.wait_for_timeout(300)
        await page.reload()


async def dead_letter(
    stack: IsolatedStack,
    app_id: str,
    sub_id: str,
    target_url: str,
    body: bytes,
    event_type: str = "order.paid",
    *,
    ago: timedelta = timedelta(minutes=5),
) -> uuid.UUID:
    """An event and a delivery that ended FAILURE, as the dispatcher would have left them."""
    [delivery_id] = await deliveries(
        stack, app_id, sub_id, target_url, [(body, event_type, "FAILURE", ago)]
    )
    return delivery_id


async def deliveries(
    stack: IsolatedStack,
    app_id: str,
    sub_id: str,
    target_url: str,
    rows: list[tuple[bytes, str, str, timedelta]],
) -> list[uuid.UUID]:
    """Events and their deliveries ``(body, event type, final status, how long ago)``; a
    FAILURE has a FAILED_ATTEMPT before it."""
    engine = make_engine(stack.settings(), pool_size=1)
    ids = []
    try:
        async with make_sessionmaker(engine).begin() as session:
            for body, event_type, status, ago in rows:
                event_id = uuid.uuid4()
                delivery_id = delivery_id_for(event_id, uuid.UUID(sub_id))
                start = datetime.now(UTC) - ago
                await session.execute(
                    insert(Event).values(
                        id=event_id,
                        received_at=start,
                        event_type=event_type,
                        subscription_id=uuid.UUID(sub_id),
                        content_type="application/json",
                        body=body,
                        application_id=uuid.UUID(app_id),
                    )
                )
                statuses = ["FAILED_ATTEMPT", "FAILURE"] if status == "FAILURE" else [status]
                await session.execute(
                    insert(DeliveryAttempt),
                    [
                        {
                            "id": uuid.uuid4(),
                            "created_at": start + timedelta(seconds=n),
                            "delivery_id": delivery_id,
                            "event_id": event_id,
                            "subscription_id": uuid.UUID(sub_id),
                            "target_url": target_url,
                            "event_type": event_type,
                            "attempt_number": n,
                            "status_code": 200 if s == "SUCCESS" else 503,
                            "status": s,
                            "error_details": None if s == "SUCCESS" else "HTTP 503",
                            "duration_ms": 12,
                            "trigger": "ingest",
                            "first_received_at": start,
                            "application_id": uuid.UUID(app_id),
                        }
                        for n, s in enumerate(statuses, start=1)
                    ],
                )
                ids.append(delivery_id)
    finally:
        await engine.dispose()
    return ids


# --- the customer's journey ---------------------------------------------------------


async def test_a_customer_adds_an_endpoint_tests_it_retries_and_logs_out(
    browser: Browser,
    page: Page,
    ingest: IngestServer,
    dispatcher: ServiceProcess,
    retry_scheduler: ServiceProcess,
    operator: httpx.AsyncClient,
    target: TargetServer,
) -> None:
    dialogs = no_dialogs(page)
    app = await new_application(operator, name="Acme Journey")
    link = await portal_link(operator, app["id"])
    await open_portal(page, link)
    await expect(page.locator(".brand")).to_contain_text("Acme Journey")
    await screenshot(page, "portal-01-endpoints-empty")

    # An endpoint through the form; its secret is on this page and on no other.
    await page.click("#new-endpoint")
    await screenshot(page, "portal-02-new-endpoint")
    sub_id, secret = await add_endpoint(page, target.url("/portal-hook"), "order.paid")
    await screenshot(page, "portal-03-secret-shown-once")
    await page.click("a:has-text('Go to the endpoint')")
    await expect(page.locator("#endpoint-url")).to_have_text(target.url("/portal-hook"))
    await screenshot(page, "portal-04-endpoint")
    for path in (PORTAL, f"/portal/endpoints/{sub_id}", f"/portal/endpoints/{sub_id}/edit"):
        assert secret not in await (await page.request.get(path)).text()

    # A test event, though the endpoint only lists order.paid: delivered and signed.
    await page.goto(f"/portal/endpoints/{sub_id}")
    await page.click("#send-test")
    await expect(page.locator(".notice")).to_contain_text("Test event sent")
    [received] = await target.wait_for(1, "/portal-hook")
    assert received.headers["x-webhook-event"] == TEST_EVENT_TYPE
    body = json.loads(received.body)
    assert body["type"] == TEST_EVENT_TYPE
    assert set(body) == {"type", "message", "sent_at"}
    expected = standard_webhooks_signature(
        standard_webhooks_key(secret),
        received.headers["webhook-id"],
        int(received.headers["webhook-timestamp"]),
        received.body,
    )
    assert received.headers["webhook-signature"] == expected
    # The list refreshes itself until the delivery's attempt is recorded.
    row = page.locator("tr.delivery")
    await expect(row).to_have_count(1, timeout=30_000)
    await expect(row.first).to_contain_text("SUCCESS")
    await expect(row.first).to_contain_text(TEST_EVENT_TYPE)
    await expect(row.first).to_contain_text(target.url("/portal-hook"))
    await screenshot(page, "portal-05-deliveries")

    # Its page: the attempt, the headers as sent (signature elided), the payload.
    await row.first.locator("a[href^='/portal/deliveries/']").click()
    assert page.url.endswith(f"/portal/deliveries/{received.headers['webhook-id']}")
    attempts = page.locator("tr.attempt")
    await expect(attempts).to_have_count(1)
    await expect(attempts.first).to_contain_text("SUCCESS")
    await expect(attempts.first).to_contain_text("200")
    headers = page.locator("#headers")
    await expect(headers).to_contain_text(f"webhook-id: {received.headers['webhook-id']}")
    await expect(headers).to_contain_text(f"x-webhook-event: {TEST_EVENT_TYPE}")
    await expect(headers).to_contain_text("webhook-signature: v1,…")
    await expect(headers).to_contain_text("x-hub-signature-256: sha256=…")
    await expect(page.locator("#payload")).to_contain_text(f'"type": "{TEST_EVENT_TYPE}"')
    content = await page.content()
    assert received.headers["webhook-signature"] not in content
    assert received.headers["x-hub-signature-256"] not in content
    await screenshot(page, "portal-06-delivery")

    # A second endpoint whose target fails: every attempt answers 500, then a dead letter.
    target.reply("/portal-fail", 500, body=b"upstream exploded")
    fail_id, _ = await add_endpoint(page, target.url("/portal-fail"))
    await page.goto(f"/portal/endpoints/{fail_id}")
    await page.click("#send-test")
    [first] = await target.wait_for(1, "/portal-fail")
    failed = first.headers["webhook-id"]
    await page.goto(f"/portal/deliveries/{failed}")
    await reload_until_text(page, "#outcome", "FAILURE")
    await expect(page.locator("tr.attempt")).to_have_count(4)  # 1 + the 1s, 2s, 3s retries
    await expect(page.locator("tr.attempt").first).to_contain_text("HTTP 500")
    await expect(page.locator("pre.excerpt").first).to_contain_text("upstream exploded")
    await screenshot(page, "portal-07-failed-delivery")

    # It is a dead letter, and the failure filter finds it.
    await page.click("nav >> text=Dead letters")
    letter = page.locator(
        "tr.dead-letter", has=page.locator(f"a[href='/portal/deliveries/{failed}']")
    )
    await expect(letter).to_contain_text("HTTP 500")
    await screenshot(page, "portal-08-dead-letters")
    await page.click("nav >> text=Deliveries")
    await page.select_option("select[name=status]", "FAILURE")
    await page.click("#filters button[type=submit]")
    await expect(page.locator("tr.delivery")).to_have_count(1)
    await expect(page.locator("tr.delivery")).to_contain_text(target.url("/portal-fail"))
    await screenshot(page, "portal-09-deliveries-filtered")

    # Retry once the target is fixed: a fresh attempt series that succeeds.
    target.reply("/portal-fail", 200)
    await page.goto(f"/portal/deliveries/{failed}")
    await page.click("#retry-now")
    await expect(page.locator(".notice")).to_contain_text(re.compile("queued|is in"))
    await expect(page.locator("tr.attempt")).to_have_count(5, timeout=30_000)
    await expect(page.locator("tr.attempt").first).to_contain_text("manual-retry")
    await expect(page.locator("tr.attempt").first).to_contain_text("SUCCESS")
    await screenshot(page, "portal-10-retried")

    # Log out: the session ends on the server, so a copy of the cookie is worth nothing.
    [cookie] = [c for c in await page.context.cookies() if c["name"] == "hookstream_portal"]
    await page.click("button:has-text('Log out')")
    await expect(page.locator("h1")).to_have_text("You are logged out")
    await screenshot(page, "portal-11-logged-out")
    response = await page.goto(link)
    assert response is not None
    assert response.status == 410
    await expect(page.locator("h1")).to_have_text("This link cannot be used")
    await screenshot(page, "portal-12-link-used")

    copied = await browser.new_context(base_url=ingest.url)
    try:
        await copied.add_cookies(
            [{"name": cookie["name"], "value": cookie["value"], "url": ingest.url + PORTAL}]
        )
        other = await copied.new_page()
        response = await other.goto(PORTAL)
        assert response is not None
        assert response.status == 401
        await expect(other.locator("h1")).to_have_text("Your portal session has ended")
        assert "Acme Journey" not in await other.content()
        await screenshot(other, "portal-13-session-ended")
    finally:
        await copied.close()
    assert dialogs == []


async def test_endpoints_are_edited_disabled_given_a_new_secret_and_deleted(
    page: Page,
    ingest: IngestServer,
    module_stack: IsolatedStack,
    operator: httpx.AsyncClient,
    target: TargetServer,
) -> None:
    app = await new_application(operator)
    await open_portal(page, await portal_link(operator, app["id"]))

    # The form says what is wrong, with what was typed.
    await page.goto("/portal/endpoints/new")
    await page.fill("#target_url", "ftp://files.example.com/in")
    await page.click("button:has-text('Add endpoint')")
    await expect(page.locator(".field-error")).to_contain_text("http or https")
    await expect(page.locator("#target_url")).to_have_value("ftp://files.example.com/in")

    sub_id, first_secret = await add_endpoint(page, target.url("/before"), "order.paid")
    await page.goto(f"/portal/endpoints/{sub_id}")
    await page.click("a:has-text('Edit')")
    await expect(page.locator("#event_types")).to_have_value("order.paid")
    await page.fill("#target_url", target.url("/after"))
    await page.fill("#event_types", "invoice.created, invoice.paid")
    # The endpoint controls: a bad filter, header line or rate is named, and what was
    # typed stays; good ones are saved and shown.
    await page.fill("#filter", '{"data.amount": {"$bogus": 1}}')
    await page.click("button:has-text('Save')")
    await expect(page.locator(".field-error")).to_contain_text("$bogus")
    await expect(page.locator("#filter")).to_have_value('{"data.amount": {"$bogus": 1}}')
    await page.fill("#filter", '{"data.amount": {"$gte": 100}}')
    await page.fill("#headers", "X-Team payments")
    await page.click("button:has-text('Save')")
    await expect(page.locator(".field-error")).to_contain_text("Name: value")
    await page.fill("#headers", "X-Team: payments")
    await page.fill("#rate_limit", "five")
    await page.click("button:has-text('Save')")
    await expect(page.locator(".field-error")).to_contain_text("whole number")
    await page.fill("#rate_limit", "5")
    await screenshot(page, "portal-14-edit-endpoint")
    await page.click("button:has-text('Save')")
    await expect(page.locator(".notice")).to_contain_text("Endpoint saved")
    await expect(page.locator("#endpoint-url")).to_have_text(target.url("/after"))
    facts = page.locator("dl.facts")
    await expect(facts).to_contain_text("invoice.paid")
    await expect(facts).to_contain_text('{"data.amount": {"$gte": 100}}')
    await expect(facts).to_contain_text("X-Team: payments")
    await expect(facts).to_contain_text("5 / s")
    saved = (await operator.get(f"/subscriptions/{sub_id}")).json()
    assert saved["filter"] == {"data.amount": {"$gte": 100}}
    assert saved["headers"] == {"X-Team": "payments"}
    assert saved["rate_limit"] == 5
    # Editing again shows them as they were saved; emptied, they are removed.
    await page.click("a:has-text('Edit')")
    await expect(page.locator("#headers")).to_have_value("X-Team: payments")
    await expect(page.locator("#rate_limit")).to_have_value("5")
    for field in ("#filter", "#headers", "#rate_limit"):
        await page.fill(field, "")
    await page.click("button:has-text('Save')")
    await expect(page.locator(".notice")).to_contain_text("Endpoint saved")
    saved = (await operator.get(f"/subscriptions/{sub_id}")).json()
    assert (saved["filter"], saved["headers"], saved["rate_limit"]) == (None, None, None)

    await page.click("#toggle-active")
    await expect(page.locator(".notice")).to_contain_text("disabled")
    await expect(page.locator("#send-test")).to_have_count(0)
    await page.goto(PORTAL)
    await expect(page.locator("tr.endpoint")).to_contain_text("inactive")
    await page.goto(f"/portal/endpoints/{sub_id}")
    await page.click("#toggle-active")
    await expect(page.locator(".notice")).to_contain_text("enabled")

    await page.click("#rotate-secret")
    await expect(page.locator("h1")).to_have_text("New signing secret")
    await expect(page.locator(".notice")).to_contain_text("with the previous one too until")
    second_secret = (await page.locator("#secret").inner_text()).strip()
    assert second_secret.startswith("whsec_")
    assert second_secret != first_secret
    engine = make_engine(module_stack.settings(), pool_size=1)
    try:
        async with make_sessionmaker(engine)() as db:
            stored = await db.get(Subscription, uuid.UUID(sub_id))
            assert stored is not None
            assert stored.secret_key == second_secret
            assert stored.previous_secret_key == first_secret  # a day's overlap
    finally:
        await engine.dispose()

    await page.goto(f"/portal/endpoints/{sub_id}")
    await page.click("#delete-endpoint")
    await expect(page.locator(".notice")).to_contain_text("Endpoint deleted")
    await expect(page.locator(f"a[href='/portal/endpoints/{sub_id}']")).to_have_count(0)
    response = await page.goto(f"/portal/endpoints/{sub_id}")
    assert response is not None
    assert response.status == 404


async def test_recover_and_filters(
    page: Page,
    ingest: IngestServer,
    module_stack: IsolatedStack,
    dispatcher: ServiceProcess,
    operator: httpx.AsyncClient,
    target: TargetServer,
) -> None:
    app = await new_application(operator)
    url = target.url("/recovered")
    r = await operator.post(f"/applications/{app['id']}/subscriptions", json={"target_url": url})
    sub_id = r.json()["id"]
    body = b'{"order": 7}'
    lost = await dead_letter(module_stack, app["id"], sub_id, url, body, ago=timedelta(hours=2))
    # 60 older deliveries: more than a page of the list.
    older = await deliveries(
        module_stack,
        app["id"],
        sub_id,
        url,
        [
            (
                b"{}",
                "invoice.paid" if n % 2 else "order.paid",
                "SUCCESS",
                timedelta(hours=3, minutes=n),
            )
            for n in range(60)
        ],
    )
    await open_portal(page, await portal_link(operator, app["id"]))

    # Newest first, 50 a page, one row per delivery (the dead letter's two attempts: one row).
    await page.goto("/portal/deliveries")
    rows = page.locator("tr.delivery")
    await expect(rows).to_have_count(50)
    await expect(rows.first).to_contain_text("FAILURE")
    await page.click("#older")
    await expect(rows).to_have_count(11)
    await expect(rows.last).to_contain_text(str(older[-1])[:8])
    await screenshot(page, "portal-15-deliveries-older")

    # Filters: event type, a time range, and both together with the endpoint.
    await page.goto("/portal/deliveries?event_type=invoice.paid")
    await expect(rows).to_have_count(30)
    since = (datetime.now(UTC) - timedelta(hours=3, minutes=10)).strftime("%Y-%m-%dT%H:%M")
    until = (datetime.now(UTC) - timedelta(hours=2, minutes=30)).strftime("%Y-%m-%dT%H:%M")
    await page.goto(f"/portal/deliveries?since={since}&until={until}&endpoint={sub_id}")
    count = await rows.count()
    # Minutes 0..8 to 0..11 before the 3 h mark: ``since`` is cut to the minute (up to
    # 59 s earlier) and a success is stored 1 s after its start (CI once counted 12).
    assert 9 <= count <= 12, count
    await expect(page.locator("input[name=since]")).to_have_value(since)

    # Recover from the endpoint's page: the failure since the chosen time is sent again.
    await page.goto(f"/portal/endpoints/{sub_id}")
    await screenshot(page, "portal-16-endpoint-recover")
    await page.click("#recover button[type=submit]")
    await expect(page.locator(".notice")).to_contain_text("1 failed delivery sent again")
    [received] = await target.wait_for(1, "/recovered")
    assert received.body == body
    assert received.headers["webhook-id"] == str(lost)
    await page.goto(f"/portal/deliveries/{lost}")
    await reload_until_text(page, "tr.attempt", "replay")


# --- isolation ----------------------------------------------------------------------


def portal_routes(stack: IsolatedStack) -> list[tuple[str, str]]:
    """Every (method, path) the app serves under /portal, read from its routes."""
    app = create_app(stack.settings())
    found = set()
    for route in iter_route_contexts(app.routes):
        if route.path and (route.path == PORTAL or route.path.startswith(PORTAL + "/")):
            for method in route.methods or ():
                if method != "HEAD":
                    found.add((method, route.path))
    # Logout last: it ends the session the walk uses.
    return sorted(found, key=lambda r: (r[1] == "/portal/logout", r[1], r[0]))


async def test_another_applications_ids_are_404_on_every_portal_route(
    page: Page,
    ingest: IngestServer,
    module_stack: IsolatedStack,
    dispatcher: ServiceProcess,
    operator: httpx.AsyncClient,
    target: TargetServer,
) -> None:
    tag = uuid.uuid4().hex[:10]
    bravo = await new_application(operator, name=f"Bravo {tag}", uid=f"bravo-{tag}")
    bravo_url = target.url(f"/bravo-{tag}")
    r = await operator.post(
        f"/applications/{bravo['id']}/subscriptions",
        json={
            "target_url": bravo_url,
            "secret_key": f"bravo-key-{tag}",
            "event_types": [f"bravo.{tag}"],
        },
    )
    assert r.status_code == 201, r.text
    bravo_sub = r.json()["id"]
    bravo_delivery = await dead_letter(
        module_stack, bravo["id"], bravo_sub, bravo_url, f'{{"bravo": "{tag}"}}'.encode()
    )
    ids = {"subscription_id": bravo_sub, "delivery_id": str(bravo_delivery)}
    secrets_of_bravo = [bravo["id"], tag, bravo_sub, str(bravo_delivery)]

    alpha = await new_application(operator, name="Alpha")
    await open_portal(page, await portal_link(operator, alpha["id"]))
    csrf = csrf_of(await page.content())

    def shows_nothing_of_bravo(text: str, where: str) -> None:
        for value in secrets_of_bravo:
            assert value not in text, f"{where} shows {value!r} of application B"

    checked = []
    for method, path in portal_routes(module_stack):
        if (method, path) in NOT_AN_OBJECT:
            continue
        params = re.findall(r"{(\w+)}", path)
        missing = [p for p in params if p not in ids]
        assert not missing, f"{method} {path}: no object of B for {missing}; add one to `ids`"
        url = path.format(**ids)
        if method == "GET":
            response = await page.goto(url)
            assert response is not None
            status, text = response.status, await page.content()
        else:
            answer = await page.request.post(url, form={"csrf": csrf, **FORM}, max_redirects=0)
            status, text = answer.status, await answer.text()
        if params:
            assert status == 404, f"{method} {url}: {status}"
        else:
            assert status < 400, f"{method} {url}: {status}"
        shows_nothing_of_bravo(text, f"{method} {url}")
        checked.append((method, path))
    with_ids = [c for c in checked if "{" in c[1]]
    assert ("GET", "/portal/deliveries/{delivery_id}") in with_ids
    assert ("POST", "/portal/endpoints/{subscription_id}/test") in with_ids
    assert len(with_ids) >= 10, with_ids

    # An id in the query is no way around it either.
    await open_portal(page, await portal_link(operator, alpha["id"]))
    response = await page.goto(f"/portal/deliveries?endpoint={bravo_sub}")
    assert response is not None
    assert response.status == 404
    shows_nothing_of_bravo(await page.content(), "the endpoint filter")
    await screenshot(page, "portal-17-not-found")

    # And nothing was done to B: same endpoint, same secret, no new attempt, no request.
    engine = make_engine(module_stack.settings(), pool_size=1)
    try:
        async with make_sessionmaker(engine)() as db:
            sub = await db.get(Subscription, uuid.UUID(bravo_sub))
            assert sub is not None
            assert (sub.target_url, sub.secret_key, sub.is_active) == (
                bravo_url,
                f"bravo-key-{tag}",
                True,
            )
            attempts = await db.scalar(
                select(func.count()).where(DeliveryAttempt.delivery_id == bravo_delivery)
            )
            assert attempts == 2
    finally:
        await engine.dispose()
    assert target.received(f"/bravo-{tag}") == []


# --- embedding ----------------------------------------------------------------------


class Embedder:
    """Another site on loopback: one page that frames ``src``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.origin = f"http://{LOOPBACK}:{self.port}"
        self.src = "about:blank"
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Embedder:
        app = web.Application()
        app.router.add_get("/", self._page)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _page(self, _: web.Request) -> web.Response:
        page = (
            "<!doctype html><title>Operator's site</title><h1>Our webhooks</h1>"
            f'<iframe id="portal" src="{html.escape(self.src)}" width="1000" height="700"></iframe>'
        )
        return web.Response(text=page, content_type="text/html")


@pytest.fixture
async def embedders() -> AsyncIterator[tuple[Embedder, Embedder]]:
    async with Embedder() as allowed, Embedder() as other:
        yield allowed, other


@pytest.fixture
def framable_ingest(
    module_stack: IsolatedStack,
    tmp_path_factory: pytest.TempPathFactory,
    embedders: tuple[Embedder, Embedder],
) -> Iterator[IngestServer]:
    allowed, _ = embedders
    with running_ingest(
        module_stack,
        tmp_path_factory.mktemp("portal-framed"),
        HOOKSTREAM_PORTAL_FRAME_ANCESTORS=allowed.origin,
    ) as server:
        yield server
    assert "Traceback" not in server.log(), server.log()[-3000:]


async def framed(
    context: BrowserContext, embedder: Embedder, src: str
) -> tuple[Page, Frame, list[str]]:
    """The embedder's page framing ``src``: the page, its frame once loaded, console lines."""
    embedder.src = src
    page = await context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    # "load" waits for the frame too, whether it shows the portal or an error page.
    await page.goto(embedder.origin + "/", wait_until="load")
    frame = await (await page.wait_for_selector("#portal")).content_frame()
    assert frame is not None
    await frame.wait_for_load_state()
    return page, frame, console


async def refused(frame: Frame, console: list[str], name: str) -> None:
    """Chromium put its own error page in the frame ("127.0.0.1 is blocked") and said why."""
    assert frame.url.startswith("chrome-error://"), (name, frame.url)
    assert await frame.locator("h1", has_text="Endpoints").count() == 0, name
    assert await frame.locator("form").count() == 0, name
    assert any("frame-ancestors" in line and "blocked" in line for line in console), (name, console)


async def test_the_portal_is_framed_only_by_the_listed_origins(
    browser: Browser,
    ingest: IngestServer,
    framable_ingest: IngestServer,
    operator: httpx.AsyncClient,
    embedders: tuple[Embedder, Embedder],
) -> None:
    allowed, other = embedders
    app = await new_application(operator, name="Framed Co")
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    try:
        # The session cookie is set by opening the link, as a customer would first.
        top = await context.new_page()
        await open_portal(top, await portal_link(operator, app["id"]))
        response = await top.request.get(framable_ingest.url + PORTAL)
        csp = response.headers["content-security-policy"]
        assert f"frame-ancestors {allowed.origin}" in csp
        assert "x-frame-options" not in response.headers

        # Listed: the portal shows inside the operator's page.
        page, frame, _ = await framed(context, allowed, framable_ingest.url + PORTAL)
        await expect(frame.locator("h1")).to_have_text("Endpoints")
        await expect(frame.locator(".brand")).to_contain_text("Framed Co")
        await screenshot(page, "portal-18-framed")

        # Not listed (another port, so another origin): Chromium refuses to show it.
        for embedder, ingest_url, name in (
            (other, framable_ingest.url, "another origin"),
            (allowed, ingest.url, "an ingest without the setting"),
        ):
            page, frame, console = await framed(context, embedder, ingest_url + PORTAL)
            await refused(frame, console, name)
        await screenshot(page, "portal-19-framing-refused")

        # The dashboard is never framable, whatever the portal's setting.
        page, frame, console = await framed(context, allowed, framable_ingest.url + "/ui/login")
        await refused(frame, console, "the dashboard")
    finally:
        await context.close()


# --- attacker-controlled text -------------------------------------------------------

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = '"><img/src=x/onerror=alert(2)>'  # an event type: printable ASCII, no spaces
XSS_BODY = {"comment": "<script>alert(3)</script>", "html": '"><img src=x onerror=alert(4)>'}
XSS_RESPONSE = b"<script>alert(5)</script><b>bold?</b>"


async def test_markup_in_urls_event_types_and_payloads_is_shown_as_text(
    page: Page,
    ingest: IngestServer,
    dispatcher: ServiceProcess,
    operator: httpx.AsyncClient,
    target: TargetServer,
) -> None:
    dialogs = no_dialogs(page)
    target.reply("/xss", 200, body=XSS_RESPONSE)
    app = await new_application(operator, name=f"{XSS_SCRIPT} Corp")
    await open_portal(page, await portal_link(operator, app["id"]))
    url = target.url(f"/xss?a={XSS_SCRIPT}&b={XSS_IMG}")
    sub_id, _ = await add_endpoint(page, url, f"{XSS_SCRIPT} {XSS_IMG}")
    await screenshot(page, "portal-xss-01-secret")
    for event_type in (XSS_SCRIPT, XSS_IMG):
        r = await operator.post(
            f"/applications/{app['id']}/events",
            json=XSS_BODY,
            headers={"x-webhook-event": event_type},
        )
        assert r.status_code == 202, r.text
    await target.wait_for(2, "/xss")
    await page.goto("/portal/deliveries")
    await reload_until_text(page, "tr.delivery", XSS_IMG)
    delivery = await page.locator("tr.delivery a[href^='/portal/deliveries/']").first.get_attribute(
        "href"
    )
    assert delivery is not None

    pages = {
        "endpoints": PORTAL,
        "endpoint": f"/portal/endpoints/{sub_id}",
        "edit": f"/portal/endpoints/{sub_id}/edit",
        "deliveries": "/portal/deliveries",
        "deliveries-filtered": "/portal/deliveries?" + urlencode({"event_type": XSS_IMG}),
        "delivery": delivery,
        "dlq": "/portal/dlq",
    }
    for name, path in pages.items():
        response = await page.goto(path)
        assert response is not None, name
        assert response.status == 200, (name, response.status)
        assert await page.locator("img").count() == 0, name
        assert await page.locator("b").count() == 0, name
        assert await page.locator("script").count() == 1, name  # our own app.js
        raw = await response.text()
        assert "<script>alert" not in raw, name
        assert "<img" not in raw, name
        await screenshot(page, f"portal-xss-{name}")
    await page.goto(delivery)
    await expect(page.locator("#payload")).to_contain_text(XSS_BODY["comment"])
    await expect(page.locator("#payload")).to_contain_text("onerror=alert(4)")
    await expect(page.locator("pre.excerpt").first).to_contain_text("<script>alert(5)</script>")
    await expect(page.locator("#headers")).to_contain_text("x-webhook-event: ")
    await page.goto(f"/portal/endpoints/{sub_id}")
    await expect(page.locator("#endpoint-url")).to_have_text(url)
    await expect(page.locator("dl.facts")).to_contain_text(XSS_IMG)
    await expect(page.locator(".brand")).to_contain_text(XSS_SCRIPT)
    assert dialogs == []
