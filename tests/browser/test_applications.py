"""The dashboard's application pages: the list, the create form, an application's page
(its subscriptions, keys and attempts; revoking a key) and the application shown on
subscription pages. Real ingest and dispatcher processes, headless Chromium where a click
matters, plain HTTP where the answer is the point.

Keys are created through the API only: a page must never contain one, only its prefix.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, expect

from services.ingest.applications.service import DUPLICATE_UID
from tests.browser.conftest import (
    browser_login,
    login,
    reload_until,
    screenshot,
    send,
)
from tests.support.broker import IngestServer
from tests.support.procs import ServiceProcess
from tests.support.targets import TargetServer

pytestmark = pytest.mark.slow

# The contract: a revoked key is refused by every process within a second.
REVOKED_WITHIN_SECONDS = 1.0


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        yield server


@pytest.fixture
async def api(ingest: IngestServer) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP API with the operator key."""
    async with httpx.AsyncClient(base_url=ingest.url, timeout=15, headers=ingest.auth) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def new_application(api: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"name": unique("app"), **fields}
    r = await api.post("/applications", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def new_key(api: httpx.AsyncClient, app_id: str, name: str = "ci") -> dict[str, Any]:
    r = await api.post(f"/applications/{app_id}/api-keys", json={"name": name})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def new_subscription(api: httpx.AsyncClient, app_id: str, **fields: Any) -> dict[str, Any]:
    r = await api.post(f"/applications/{app_id}/subscriptions", json=fields)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def key_status(ingest: IngestServer, key: str) -> int:
    async with httpx.AsyncClient(base_url=ingest.url, timeout=5) as client:
        r = await client.get("/subscriptions/", headers={"Authorization": f"Bearer {key}"})
    return r.status_code


# --- browser ------------------------------------------------------------------------


async def test_create_an_application_through_the_form(page: Page, ingest: IngestServer) -> None:
    uid = unique("customer")
    name = "Acme <b>Corp</b>"  # markup in a name is shown as text
    await browser_login(page, ingest.api_key)
    await page.click("nav >> text=Applications")
    await expect(page.locator("h1")).to_contain_text("Applications")
    await page.click("text=New application")
    await page.fill("#name", name)
    await page.fill("#uid", uid)
    await page.fill("#metadata", '{"plan": "pro", "seats": [1, 2]}')
    await page.click("button:has-text('Create')")

    await expect(page.locator(".notice")).to_contain_text("Application created")
    app_id = re.search(r"/ui/applications/([0-9a-f-]{36})", page.url)
    assert app_id, page.url
    facts = page.locator("dl.facts")
    await expect(facts).to_contain_text(app_id.group(1))
    await expect(facts).to_contain_text(uid)
    await expect(page.locator("h1")).to_contain_text(name)
    await expect(page.locator("b", has_text="Corp")).to_have_count(0)
    await expect(page.locator("#metadata")).to_contain_text('"plan": "pro"')
    html = await (await page.request.get(page.url)).text()
    assert "&#34;seats&#34;: [\n    1,\n    2\n  ]" in html  # pretty-printed
    await screenshot(page, "10-application-created")

    # Newest first: the new application heads the list, with its uid and 0 subscriptions.
    await page.click("nav >> text=Applications")
    first = page.locator("tbody tr").first
    await expect(first).to_contain_text(uid)
    await expect(first).to_contain_text(name)
    await expect(first.locator("td").nth(3)).to_have_text("0")
    await screenshot(page, "11-applications")


async def test_application_page_lists_subscriptions_keys_and_attempts(
    page: Page,
    ingest: IngestServer,
    api: httpx.AsyncClient,
    dispatcher: ServiceProcess,
    target: TargetServer,
) -> None:
    app = await new_application(api, uid=unique("shop"), metadata={"tier": "gold"})
    sub = await new_subscription(
        api, app["id"], target_url=target.url("/app-hook"), event_types=["order.paid"]
    )
    key = await new_key(api, app["id"], name="billing backend")
    other = await new_application(api)
    await new_subscription(api, other["id"], target_url=target.url("/other-hook"))
    await new_key(api, other["id"], name="other app's key")
    delivery_id = await send(ingest, sub["id"], b'{"order": 1}', "order.paid")
    await target.wait_for(1, "/app-hook")

    await browser_login(page, ingest.api_key)
    await page.goto(f"/ui/applications/{app['uid']}")  # by uid as well as by id
    subs = page.locator("#subscriptions tbody tr")
    await expect(subs).to_have_count(1)
    await expect(subs.first).to_contain_text(target.url("/app-hook"))
    await expect(subs.first).to_contain_text("order.paid")
    await expect(subs.first).to_contain_text("active")
    keys = page.locator("tr.api-key")
    await expect(keys).to_have_count(1)
    await expect(keys.first).to_contain_text("billing backend")
    await expect(keys.first).to_contain_text(key["prefix"])
    await expect(keys.first).to_contain_text("never")  # expires
    # The attempt is written after the target answered.
    await reload_until(page, f"table.attempts a[href='/ui/deliveries/{delivery_id}']")
    await expect(page.locator("table.attempts")).to_contain_text("SUCCESS")
    await screenshot(page, "12-application-page")

    await page.click("nav >> text=Applications")
    listed = page.locator("tr", has=page.locator(f"a[href='/ui/applications/{app['id']}']"))
    await expect(listed.locator("td").nth(3)).to_have_text("1")  # subscriptions
    await page.go_back()

    # Nothing of the other application is on this page.
    body = page.locator("main")
    await expect(body).not_to_contain_text("/other-hook")
    await expect(body).not_to_contain_text("other app's key")

    # The key itself is on no page, only its prefix.
    for path in (
        f"/ui/applications/{app['id']}",
        f"/ui/applications/{app['uid']}",
        "/ui/applications",
        "/ui/subscriptions",
        f"/ui/subscriptions/{sub['id']}",
        f"/ui/deliveries/{delivery_id}",
        "/ui",
    ):
        r = await page.request.get(path)
        assert r.status == 200, path
        html = await r.text()
        assert key["key"] not in html, path
        assert key["key"][len(key["prefix"]) :] not in html, path
    html = await (await page.request.get(f"/ui/applications/{app['id']}")).text()
    assert key["prefix"] in html


async def test_revoke_a_key_from_the_application_page(
    page: Page, ingest: IngestServer, api: httpx.AsyncClient
) -> None:
    app = await new_application(api)
    kept = await new_key(api, app["id"], name="kept")
    doomed = await new_key(api, app["id"], name="doomed")
    assert await key_status(ingest, doomed["key"]) == 200  # and now remembered as valid

    await browser_login(page, ingest.api_key)
    await page.goto(f"/ui/applications/{app['id']}")
    row = page.locator("tr.api-key", has_text="doomed")
    await row.locator("button:has-text('Revoke')").click()
    await expect(page.locator(".notice")).to_contain_text("API key revoked")
    revoked_at = time.monotonic()  # committed before the redirect that showed the notice
    await expect(page.locator("tr.api-key")).to_have_count(1)
    await expect(page.locator("tr.api-key")).to_contain_text("kept")
    await screenshot(page, "13-key-revoked")

    while (status := await key_status(ingest, doomed["key"])) != 401:
        assert status == 200, status
        elapsed = time.monotonic() - revoked_at
        assert elapsed < REVOKED_WITHIN_SECONDS, f"revoked key still accepted after {elapsed}s"
        await page.wait_for_timeout(50)
    assert time.monotonic() - revoked_at < REVOKED_WITHIN_SECONDS
    assert await key_status(ingest, kept["key"]) == 200


async def test_subscription_pages_show_the_application(
    page: Page, ingest: IngestServer, api: httpx.AsyncClient
) -> None:
    app = await new_application(api, name="Shown Application", uid=unique("shown"))
    sub = await new_subscription(api, app["id"], target_url="https://example.com/shown")
    link = f"a[href='/ui/applications/{app['id']}']"

    await browser_login(page, ingest.api_key)
    await page.goto(f"/ui/subscriptions/{sub['id']}")
    await expect(page.locator("#application")).to_contain_text("Shown Application")
    await expect(page.locator("#application")).to_contain_text(app["uid"])
    await page.goto("/ui/subscriptions")
    row = page.locator("tr", has=page.locator(f"a[href='/ui/subscriptions/{sub['id']}']"))
    await expect(row.locator(link)).to_have_text("Shown Application")
    await row.locator(link).click()
    await expect(page.locator("h1")).to_contain_text("Shown Application")
    await expect(page.locator("#subscriptions")).to_contain_text("https://example.com/shown")

    # A subscription of a deleted application still says whose it was, without a link.
    r = await api.delete(f"/applications/{app['id']}")
    assert r.status_code == 204, r.text
    await page.goto(f"/ui/subscriptions/{sub['id']}")
    await expect(page.locator("#application")).to_contain_text("(deleted)")
    await expect(page.locator(f"#application {link}")).to_have_count(0)


# --- HTTP ---------------------------------------------------------------------------


async def test_the_list_pages_by_cursor(
    anonymous: httpx.AsyncClient, ingest: IngestServer, api: httpx.AsyncClient
) -> None:
    await login(anonymous, ingest.api_key)
    made = [await new_application(api, name=unique("paged")) for _ in range(101)]
    first = await anonymous.get("/ui/applications")
    assert first.status_code == 200
    newest = made[-1]["name"]
    assert newest in first.text
    older = re.search(r'href="/ui/applications\?cursor=([^"]+)"', first.text)
    assert older, "no link to the next page"
    second = await anonymous.get(f"/ui/applications?cursor={older.group(1)}")
    assert second.status_code == 200
    names = [a["name"] for a in made]
    # 100 a page, newest first: the 100 just made, then the first of them (and older ones).
    assert {n for n in names if n in first.text} == set(names[1:])
    assert {n for n in names if n in second.text} == {names[0]}
    assert 'href="/ui/applications"' in second.text  # back to the newest
    bad = await anonymous.get("/ui/applications?cursor=not-a-cursor")
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("text/html")


async def test_form_errors_keep_what_was_typed(
    anonymous: httpx.AsyncClient, ingest: IngestServer, api: httpx.AsyncClient
) -> None:
    csrf = await login(anonymous, ingest.api_key)
    cases = [
        ({"name": "x", "uid": "has space"}, 422, "letters, digits"),
        ({"name": "x", "uid": str(uuid.uuid4())}, 422, "must not be a UUID"),
        ({"name": "  "}, 422, "at least 1 character"),
        ({"name": "x", "metadata": "{not json"}, 422, "is not valid JSON"),
        ({"name": "x", "metadata": "[1, 2]"}, 422, "must be a JSON object"),
        ({"name": "x", "metadata": '{"a": "\\u0000"}'}, 422, "NUL"),
        ({"name": "x", "metadata": '{"a": ' + "[" * 300 + "]" * 300 + "}"}, 422, "cannot be"),
        ({"name": "x", "metadata": json.dumps({"a": "y" * 5000})}, 422, "at most 4096 bytes"),
    ]
    for fields, status, message in cases:
        r = await anonymous.post("/ui/applications", data={"csrf": csrf, **fields})
        assert r.status_code == status, (fields, r.status_code)
        assert message in r.text, (fields, r.text[-2000:])
        assert 'id="name"' in r.text  # the form again

    taken = await new_application(api, uid=unique("taken"))
    r = await anonymous.post(
        "/ui/applications",
        data={"csrf": csrf, "name": "second", "uid": taken["uid"], "metadata": '{"k": 1}'},
    )
    assert r.status_code == 409
    assert DUPLICATE_UID in r.text
    assert f'value="{taken["uid"]}"' in r.text
    assert "{&#34;k&#34;: 1}" in r.text  # the metadata typed, escaped in the textarea
    assert (await api.get(f"/applications/{taken['uid']}")).json()["name"] == taken["name"]


async def test_forms_refuse_a_missing_or_wrong_csrf_token(
    anonymous: httpx.AsyncClient, api: httpx.AsyncClient, ingest: IngestServer
) -> None:
    csrf = await login(anonymous, ingest.api_key)
    app = await new_application(api)
    key = await new_key(api, app["id"])
    uid = unique("forged")
    forms = {
        "/ui/applications": {"name": "forged", "uid": uid},
        f"/ui/applications/{app['id']}/api-keys/{key['id']}/revoke": {},
    }
    for path, fields in forms.items():
        for token in (None, "", csrf + "x"):
            data = fields if token is None else {**fields, "csrf": token}
            r = await anonymous.post(path, data=data)
            assert r.status_code == 403, (path, token, r.status_code)
        r = await anonymous.post(path, json={**fields, "csrf": csrf})
        assert r.status_code == 403, path
    assert (await api.get(f"/applications/{uid}")).status_code == 404
    assert await key_status(ingest, key["key"]) == 200


async def test_a_key_is_revoked_only_through_its_own_application(
    anonymous: httpx.AsyncClient, api: httpx.AsyncClient, ingest: IngestServer
) -> None:
    csrf = await login(anonymous, ingest.api_key)
    mine = await new_application(api)
    theirs = await new_application(api)
    their_key = await new_key(api, theirs["id"])
    r = await anonymous.post(
        f"/ui/applications/{mine['id']}/api-keys/{their_key['id']}/revoke", data={"csrf": csrf}
    )
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html")
    assert await key_status(ingest, their_key["key"]) == 200
    page = await anonymous.get(f"/ui/applications/{theirs['id']}")
    assert their_key["prefix"] in page.text


async def test_unknown_and_deleted_applications_are_404_pages(
    anonymous: httpx.AsyncClient, api: httpx.AsyncClient, ingest: IngestServer
) -> None:
    await login(anonymous, ingest.api_key)
    gone = await new_application(api, uid=unique("gone"))
    assert (await api.delete(f"/applications/{gone['id']}")).status_code == 204
    for path in (
        f"/ui/applications/{uuid.uuid4()}",
        "/ui/applications/no-such-uid",
        f"/ui/applications/{gone['id']}",
        f"/ui/applications/{gone['uid']}",
        f"/ui/applications/{'x' * 101}",
    ):
        r = await anonymous.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("text/html")
    listing = await anonymous.get("/ui/applications")
    assert gone["uid"] not in listing.text


async def test_application_pages_need_a_login(
    anonymous: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    app = await new_application(api)
    for path in ("/ui/applications", "/ui/applications/new", f"/ui/applications/{app['id']}"):
        r = await anonymous.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/ui/login?next=")
    r = await anonymous.post("/ui/applications", data={"csrf": "x", "name": "anonymous"})
    assert r.status_code == 303
    assert r.headers["location"].startswith("/ui/login")
