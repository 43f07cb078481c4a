"""The dashboard in headless Chromium, end to end: real ingest and dispatcher processes,
a real local HTTP target, Kafka, PostgreSQL and Redis.

Screenshots of each step land in test-artifacts/browser/.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from playwright.async_api import Dialog, Page, expect
from sqlalchemy import insert

from shared.db import make_engine, make_sessionmaker
from shared.models import DeliveryAttempt, Event
from shared.records import delivery_id_for
from tests.browser.conftest import browser_login, reload_until, screenshot, send
from tests.support.broker import IngestServer
from tests.support.procs import ServiceProcess
from tests.support.stack import IsolatedStack
from tests.support.targets import TargetServer

pytestmark = pytest.mark.slow

XSS_BODY = "<script>alert(1)</script>"
XSS_EVENT_TYPE = "<img/src=x/onerror=alert(2)>"  # printable ASCII without spaces: a valid type
XSS_RESPONSE = b"<script>alert(3)</script><b>bold?</b>"


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        yield server


def no_dialogs(page: Page) -> list[str]:
    """Every alert/confirm/prompt the page opens (each one dismissed at once)."""
    opened: list[str] = []

    async def on_dialog(dialog: Dialog) -> None:
        opened.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    return opened


async def test_create_deliver_and_retry_through_the_dashboard(
    page: Page, ingest: IngestServer, dispatcher: ServiceProcess, target: TargetServer
) -> None:
    dialogs = no_dialogs(page)
    await browser_login(page, ingest.api_key)
    await expect(page.locator("h1")).to_contain_text("Overview")
    await expect(page.locator("svg.chart")).to_be_visible()
    await screenshot(page, "01-overview-empty")

    # Create a subscription through the form.
    await page.click("text=Subscriptions")
    await page.click("text=New subscription")
    await page.fill("#target_url", target.url("/hook"))
    await page.fill("#event_types", "order.paid, order.refunded")
    await page.click("button:has-text('Create')")
    await expect(page.locator(".notice")).to_contain_text("Subscription created")
    sub_id = re.search(r"/ui/subscriptions/([0-9a-f-]{36})", page.url)
    assert sub_id, page.url
    await expect(page.locator("dl.facts")).to_contain_text(target.url("/hook"))
    await expect(page.locator("dl.facts")).to_contain_text("order.refunded")
    await screenshot(page, "02-subscription-created")

    # A webhook goes in through the API and the dispatcher delivers it.
    body = json.dumps({"order": 42, "total": "19.99"}).encode()
    delivery_id = await send(ingest, sub_id.group(1), body, "order.paid")
    [received] = await target.wait_for(1, "/hook")
    assert received.body == body

    # The delivery appears on the subscription page, its attempt on the delivery page.
    await reload_until(page, f"a[href='/ui/deliveries/{delivery_id}']")
    await expect(page.locator("table.attempts")).to_contain_text("SUCCESS")
    await screenshot(page, "03-subscription-with-delivery")
    await page.click(f"a[href='/ui/deliveries/{delivery_id}']")
    attempts = page.locator("tr.attempt")
    await expect(attempts).to_have_count(1)
    await expect(attempts.first).to_contain_text("SUCCESS")
    await expect(attempts.first).to_contain_text("200")
    await expect(attempts.first).to_contain_text("ingest")
    await expect(page.locator("#payload")).to_contain_text('"order": 42')
    await screenshot(page, "04-delivery")

    # Retry now: a fresh attempt series; the page refreshes itself until it shows.
    await page.click("#retry-now")
    await expect(page.locator(".notice")).to_contain_text(re.compile("queued|is in"))
    await expect(attempts).to_have_count(2, timeout=30_000)
    await expect(page.locator(".notice")).to_contain_text("is in")
    await expect(attempts.first).to_contain_text("manual-retry")
    await expect(attempts.first).to_contain_text("SUCCESS")
    assert len(target.received("/hook")) == 2
    await screenshot(page, "05-delivery-retried")

    # The overview counts both attempts.
    await page.click("text=Overview")
    await expect(page.locator(".legend")).to_contain_text("success (2)")
    # One bar per minute: two when the retry fell in the minute after the first attempt.
    assert await page.locator("svg.chart rect.bar.SUCCESS").count() in (1, 2)
    await screenshot(page, "06-overview")

    # Deactivate from the subscription page; it then shows on the overview.
    await page.goto(f"/ui/subscriptions/{sub_id.group(1)}")
    await page.click("button:has-text('Deactivate')")
    await expect(page.locator(".notice")).to_contain_text("deactivated")
    await page.click("text=Overview")
    await expect(page.locator("body")).to_contain_text(target.url("/hook"))
    assert dialogs == []


async def test_attacker_controlled_text_is_shown_as_text(
    page: Page, ingest: IngestServer, dispatcher: ServiceProcess, target: TargetServer
) -> None:
    """A payload, an event type and a target's response, each carrying markup, come back as
    the characters they are: no dialog opens, and the HTML holds them escaped."""
    dialogs = no_dialogs(page)
    target.reply("/xss", 200, body=XSS_RESPONSE)
    async with httpx.AsyncClient(base_url=ingest.url, timeout=15, headers=ingest.auth) as api:
        r = await api.post("/subscriptions/", json={"target_url": target.url("/xss")})
        sub_id = r.json()["id"]
    body = json.dumps({"comment": XSS_BODY}).encode()
    delivery_id = await send(ingest, sub_id, body, XSS_EVENT_TYPE)
    await target.wait_for(1, "/xss")

    await browser_login(page, ingest.api_key)
    await page.goto(f"/ui/subscriptions/{sub_id}")
    await reload_until(page, f"a[href='/ui/deliveries/{delivery_id}']")
    await expect(page.locator("table.attempts")).to_contain_text(XSS_EVENT_TYPE)
    await page.goto(f"/ui/deliveries/{delivery_id}")
    await expect(page.locator("#payload")).to_contain_text(XSS_BODY)
    await expect(page.locator("pre.excerpt")).to_contain_text("<script>alert(3)</script>")
    await expect(page.locator("b", has_text="bold?")).to_have_count(0)
    await screenshot(page, "07-xss-as-text")

    raw = await (await page.request.get(f"/ui/deliveries/{delivery_id}")).text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in raw
    assert "&lt;img/src=x/onerror=alert(2)&gt;" in raw
    assert "<script>alert" not in raw
    assert "<img/src" not in raw
    for path in ("/ui", "/ui/subscriptions", f"/ui/subscriptions/{sub_id}", "/ui/dlq"):
        await page.goto(path)
    assert dialogs == []


async def dead_letter(
    module_stack: IsolatedStack, sub_id: str, target_url: str, body: bytes
) -> uuid.UUID:
    """An event and a delivery that ended FAILURE, as the dispatcher would have left them."""
    event_id = uuid.uuid4()
    delivery_id = delivery_id_for(event_id, uuid.UUID(sub_id))
    start = datetime.now(UTC) - timedelta(minutes=5)
    engine = make_engine(module_stack.settings(), pool_size=1)
    try:
        async with make_sessionmaker(engine).begin() as session:
            await session.execute(
                insert(Event).values(
                    id=event_id,
                    received_at=start,
                    event_type="order.paid",
                    subscription_id=uuid.UUID(sub_id),
                    content_type="application/json",
                    body=body,
                )
            )
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
                        "event_type": "order.paid",
                        "attempt_number": n,
                        "status_code": 503,
                        "status": status,
                        "error_details": "HTTP 503",
                        "trigger": "ingest",
                        "first_received_at": start,
                    }
                    for n, status in enumerate(["FAILED_ATTEMPT", "FAILURE"], start=1)
                ],
            )
    finally:
        await engine.dispose()
    return delivery_id


async def test_dead_letters_replay(
    page: Page,
    ingest: IngestServer,
    module_stack: IsolatedStack,
    dispatcher: ServiceProcess,
    target: TargetServer,
) -> None:
    url = target.url("/recovered")
    async with httpx.AsyncClient(base_url=ingest.url, timeout=15, headers=ingest.auth) as api:
        sub_id = (await api.post("/subscriptions/", json={"target_url": url})).json()["id"]
    body = b'{"order": 7}'
    delivery_id = await dead_letter(module_stack, sub_id, url, body)

    await browser_login(page, ingest.api_key)
    await page.goto(f"/ui/dlq?subscription_id={sub_id}")
    row = page.locator("tr", has=page.locator(f"a[href='/ui/deliveries/{delivery_id}']"))
    await expect(row).to_contain_text("HTTP 503")
    await screenshot(page, "08-dead-letters")

    await page.click("button:has-text('Replay')")
    await expect(page.locator(".notice")).to_contain_text("1 failed delivery queued again")
    [received] = await target.wait_for(1, "/recovered")
    assert received.body == body
    assert received.headers["webhook-id"] == str(delivery_id)
    # Once the replay's attempt is recorded the delivery is no dead letter any more.
    deadline = time.monotonic() + 30
    while await row.count():
        assert time.monotonic() < deadline, "the replayed delivery stayed in the DLQ"
        await page.wait_for_timeout(300)
        await page.goto(f"/ui/dlq?subscription_id={sub_id}")
    await page.goto(f"/ui/deliveries/{delivery_id}")
    await expect(page.locator("tr.attempt").first).to_contain_text("replay")
    await screenshot(page, "09-replayed")
