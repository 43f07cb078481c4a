"""The dashboard's gate, over HTTP: login, the server-side session, CSRF on every form,
the per-address limit on failed logins.

Mostly no browser needed: these are the answers a browser would get. One test logs out
in Chromium and replays the cookie in a second browser context.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest.login_limit import LIMIT, WINDOW
from shared.db import make_engine
from tests.browser.conftest import browser_login, csrf_of, login
from tests.support.broker import IngestServer, running_ingest
from tests.support.signing import hub_headers
from tests.support.stack import IsolatedStack

PAGES = ["/ui", "/ui/subscriptions", "/ui/subscriptions/new", "/ui/dlq"]
COOKIE = "hookstream_ui"


@pytest.fixture
async def db(module_stack: IsolatedStack) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(module_stack.settings(), pool_size=1)
    yield engine
    await engine.dispose()


def client_at(url: str, address: str = "127.0.0.1") -> httpx.AsyncClient:
    """A client whose connections come from ``address`` (any of 127.0.0.0/8): the login
    limit counts per client address, so a test that uses it up does so on its own."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=url, timeout=15, transport=transport)


def token_hash(cookie: str) -> bytes:
    return hashlib.sha256(cookie.split(".")[0].encode()).digest()


@dataclass(frozen=True)
class SessionRow:
    kind: str
    csrf: str
    lifetime: timedelta
    ended_at: datetime | None


async def session_row(db: AsyncEngine, cookie: str) -> SessionRow | None:
    async with db.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT kind, csrf, expires_at - created_at AS lifetime, ended_at "
                    "FROM web_sessions WHERE token_hash = :h"
                ),
                {"h": token_hash(cookie)},
            )
        ).first()
    return None if row is None else SessionRow(**row._mapping)


@pytest.mark.parametrize("path", PAGES)
async def test_pages_need_a_login(anonymous: httpx.AsyncClient, path: str) -> None:
    r = await anonymous.get(path)
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/login?next=" + path.replace("/", "%2F")


async def test_login_starts_a_server_side_session_in_an_httponly_strict_cookie(
    anonymous: httpx.AsyncClient, ingest: IngestServer, db: AsyncEngine
) -> None:
    form = await anonymous.get("/ui/login")
    assert form.status_code == 200
    assert "default-src 'none'" in form.headers["content-security-policy"]
    login_cookie = form.headers["set-cookie"]
    assert login_cookie.startswith("hookstream_ui_login=")
    assert "HttpOnly" in login_cookie
    assert "samesite=strict" in login_cookie.lower()
    assert "Path=/ui/login" in login_cookie
    r = await anonymous.post(
        "/ui/login",
        data={"csrf": csrf_of(form.text), "api_key": ingest.api_key, "next": "/ui/dlq"},
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/dlq"
    cookies = {c.split("=")[0]: c for c in r.headers.get_list("set-cookie")}
    cookie = cookies[COOKIE]
    assert "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower()
    assert "Path=/ui;" in cookie
    assert "Max-Age=43200" in cookie  # 12 h
    assert "Secure" not in cookie  # plain http here; https sets it
    assert ingest.api_key not in cookie
    assert "Max-Age=0" in cookies["hookstream_ui_login"]  # the login form's token is spent
    # The row: a SHA-256 of the token, never the token; the CSRF token; 12 hours.
    value = anonymous.cookies[COOKIE]
    row = await session_row(db, value)
    assert row is not None
    assert row.kind == "ui"
    # expires_at is the app's clock, created_at the database's: equal within a request.
    assert abs(row.lifetime - timedelta(hours=12)) < timedelta(seconds=5)
    assert row.ended_at is None
    page = await anonymous.get("/ui/dlq")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert csrf_of(page.text) == row.csrf


async def test_a_wrong_key_is_refused(anonymous: httpx.AsyncClient, ingest: IngestServer) -> None:
    form = await anonymous.get("/ui/login")
    r = await anonymous.post(
        "/ui/login", data={"csrf": csrf_of(form.text), "api_key": ingest.api_key + "x"}
    )
    assert r.status_code == 401
    assert "not valid" in r.text
    assert (await anonymous.get("/ui")).status_code == 303


async def test_login_never_redirects_off_the_dashboard(
    anonymous: httpx.AsyncClient, ingest: IngestServer
) -> None:
    for target in ("https://evil.example/", "//evil.example/ui", "/status/dlq"):
        anonymous.cookies.clear()
        form = await anonymous.get("/ui/login")
        r = await anonymous.post(
            "/ui/login",
            data={"csrf": csrf_of(form.text), "api_key": ingest.api_key, "next": target},
        )
        assert r.headers["location"] == "/ui", target


async def test_a_forged_or_tampered_cookie_is_no_session(
    anonymous: httpx.AsyncClient, ingest: IngestServer
) -> None:
    await login(anonymous, ingest.api_key)
    value = anonymous.cookies[COOKIE]
    token, tag = value.split(".")
    assert (await anonymous.get("/ui")).status_code == 200
    made_up = "A" * len(token)
    for bad in (
        f"{token}.{tag[:-2]}AA",  # another tag
        f"{made_up}.{tag}",  # another token, the same tag
        token,  # the token without its tag
        f"{token}.{tag}.x",
        f".{tag}",
        "garbage",
        "",
    ):
        anonymous.cookies.clear()
        anonymous.cookies.set(COOKIE, bad, path="/ui")
        assert (await anonymous.get("/ui")).status_code == 303, bad


async def test_login_form_has_csrf_too(anonymous: httpx.AsyncClient, ingest: IngestServer) -> None:
    form = await anonymous.get("/ui/login")
    csrf = csrf_of(form.text)
    r = await anonymous.post("/ui/login", data={"api_key": ingest.api_key})
    assert r.status_code == 403
    # A double-submit token: the form's value counts only with the cookie it came with.
    anonymous.cookies.clear()
    r = await anonymous.post("/ui/login", data={"csrf": csrf, "api_key": ingest.api_key})
    assert r.status_code == 403
    anonymous.cookies.set("hookstream_ui_login", "planted", path="/ui/login")
    r = await anonymous.post("/ui/login", data={"csrf": csrf, "api_key": ingest.api_key})
    assert r.status_code == 403
    assert COOKIE not in anonymous.cookies
    assert (await anonymous.get("/ui")).status_code == 303


async def test_every_form_refuses_a_missing_or_wrong_csrf_token(
    anonymous: httpx.AsyncClient, ingest: IngestServer
) -> None:
    csrf = await login(anonymous, ingest.api_key)
    r = await anonymous.post(
        "/ui/subscriptions", data={"csrf": csrf, "target_url": "https://e.com/hook"}
    )
    assert r.status_code == 303
    sub_path = r.headers["location"].split("?")[0]
    some_id = uuid.uuid4()
    forms = {
        "/ui/subscriptions": {"target_url": "https://e.com/other"},
        sub_path: {"target_url": "https://e.com/changed"},
        f"{sub_path}/active": {"active": "false"},
        f"{sub_path}/replay": {"since_hours": "24"},
        f"/ui/deliveries/{some_id}/retry": {},
        "/ui/logout": {},
    }
    for path, fields in forms.items():
        for token in (None, "", csrf[:-1] + ("A" if csrf[-1] != "A" else "B"), csrf + "x"):
            data = fields if token is None else {**fields, "csrf": token}
            r = await anonymous.post(path, data=data)
            assert r.status_code == 403, (path, token, r.status_code)
        # The right token in a body that is not a form (JSON) does not count either.
        r = await anonymous.post(path, json={**fields, "csrf": csrf})
        assert r.status_code == 403, path
    # Nothing was changed by any of them.
    page = await anonymous.get(sub_path)
    assert "https://e.com/hook" in page.text
    assert "Deactivate" in page.text
    listing = await anonymous.get("/ui/subscriptions")
    assert "https://e.com/other" not in listing.text


async def test_a_token_from_another_session_is_refused(
    ingest: IngestServer, anonymous: httpx.AsyncClient
) -> None:
    theirs = await login(anonymous, ingest.api_key)
    async with httpx.AsyncClient(base_url=ingest.url, timeout=15) as mine:
        await login(mine, ingest.api_key)
        r = await mine.post(
            "/ui/subscriptions", data={"csrf": theirs, "target_url": "https://e.com/"}
        )
        assert r.status_code == 403


async def test_a_post_without_a_session_goes_to_login(anonymous: httpx.AsyncClient) -> None:
    r = await anonymous.post(
        "/ui/subscriptions", data={"csrf": "x", "target_url": "https://e.com/hook"}
    )
    assert r.status_code == 303
    assert r.headers["location"].startswith("/ui/login")


async def test_logout_revokes_a_copied_cookie(
    anonymous: httpx.AsyncClient, ingest: IngestServer, db: AsyncEngine
) -> None:
    csrf = await login(anonymous, ingest.api_key)
    stolen = anonymous.cookies[COOKIE]
    async with httpx.AsyncClient(base_url=ingest.url, timeout=15) as thief:
        thief.cookies.set(COOKIE, stolen, path="/ui")
        assert (await thief.get("/ui")).status_code == 200  # the copy works before logout
        r = await anonymous.post("/ui/logout", data={"csrf": csrf})
        assert r.status_code == 303
        assert r.headers["location"] == "/ui/login"
        assert (await anonymous.get("/ui")).status_code == 303
        # The row is ended: the copy taken before logout gets the login page, and its
        # forms (with the session's own CSRF token) change nothing.
        row = await session_row(db, stolen)
        assert row is not None
        assert row.ended_at is not None
        r = await thief.get("/ui")
        assert r.status_code == 303
        assert r.headers["location"].startswith("/ui/login")
        r = await thief.post(
            "/ui/subscriptions", data={"csrf": csrf, "target_url": "https://e.com/stolen"}
        )
        assert r.status_code == 303
        assert r.headers["location"].startswith("/ui/login")
    await login(anonymous, ingest.api_key)
    listing = await anonymous.get("/ui/subscriptions")
    assert "https://e.com/stolen" not in listing.text


async def test_logging_out_in_chromium_revokes_a_copied_cookie(
    page: Page, browser: Browser, ingest: IngestServer
) -> None:
    await browser_login(page, ingest.api_key)
    copied = [c for c in await page.context.cookies() if c.get("name") == COOKIE]
    assert len(copied) == 1
    cookie = copied[0]
    assert cookie.get("httpOnly") is True
    assert cookie.get("sameSite") == "Strict"
    other = await browser.new_context(base_url=ingest.url)
    try:
        await other.add_cookies(
            [
                {
                    "name": COOKIE,
                    "value": cookie.get("value", ""),
                    "domain": cookie.get("domain", "127.0.0.1"),
                    "path": cookie.get("path", "/ui"),
                }
            ]
        )
        thief = await other.new_page()
        await thief.goto("/ui/subscriptions")
        assert thief.url.endswith("/ui/subscriptions")  # the copy works before logout
        await page.click("button:has-text('Log out')")
        await page.wait_for_url("**/ui/login")
        await thief.reload()
        assert "/ui/login" in thief.url
        assert await thief.locator("#api_key").count() == 1
        assert await thief.locator("form.logout").count() == 0
    finally:
        await other.close()


async def test_an_expired_session_is_refused(
    anonymous: httpx.AsyncClient, ingest: IngestServer, db: AsyncEngine
) -> None:
    await login(anonymous, ingest.api_key)
    value = anonymous.cookies[COOKIE]
    async with db.begin() as conn:
        changed = await conn.execute(
            text(
                "UPDATE web_sessions SET expires_at = now() - interval '1 second' "
                "WHERE token_hash = :h"
            ),
            {"h": token_hash(value)},
        )
    assert changed.rowcount == 1
    r = await anonymous.get("/ui/dlq")
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/login?next=%2Fui%2Fdlq"
    # The login form shows (no redirect loop on a cookie that names a dead session).
    assert (await anonymous.get(r.headers["location"])).status_code == 200


async def test_sessions_are_shared_by_processes_and_survive_a_restart(
    ingest: IngestServer, module_stack: IsolatedStack, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=ingest.url, timeout=15) as first:
        csrf = await login(first, ingest.api_key)
        value = first.cookies[COOKIE]
    with running_ingest(module_stack, tmp_path) as other:
        async with httpx.AsyncClient(base_url=other.url, timeout=15) as second:
            second.cookies.set(COOKIE, value, path="/ui")
            page = await second.get("/ui")
            assert page.status_code == 200
            assert csrf_of(page.text) == csrf
    # A restart (the process above is gone, a new one starts) keeps the session.
    with running_ingest(module_stack, tmp_path) as restarted:
        async with httpx.AsyncClient(base_url=restarted.url, timeout=15) as third:
            third.cookies.set(COOKIE, value, path="/ui")
            assert (await third.get("/ui")).status_code == 200
            # Logging out in one process ends the session in every other.
            assert (await third.post("/ui/logout", data={"csrf": csrf})).status_code == 303
    async with httpx.AsyncClient(base_url=ingest.url, timeout=15) as first:
        first.cookies.set(COOKIE, value, path="/ui")
        assert (await first.get("/ui")).status_code == 303


async def test_a_new_api_key_logs_every_browser_out(
    ingest: IngestServer, module_stack: IsolatedStack, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=ingest.url, timeout=15) as old:
        await login(old, ingest.api_key)
        value = old.cookies[COOKIE]
    # The same database and sessions, the key rotated.
    with running_ingest(
        module_stack, tmp_path, HOOKSTREAM_API_KEY="rotated-" + ingest.api_key
    ) as new:
        async with httpx.AsyncClient(base_url=new.url, timeout=15) as client:
            client.cookies.set(COOKIE, value, path="/ui")
            assert (await client.get("/ui")).status_code == 303
            client.cookies.clear()
            await login(client, new.api_key)
            rotated = client.cookies[COOKIE]
    # Still live where the old key is configured, so only the key refused it; and a
    # session started under the new key means nothing under the old one.
    async with httpx.AsyncClient(base_url=ingest.url, timeout=15) as client:
        client.cookies.set(COOKIE, value, path="/ui")
        assert (await client.get("/ui")).status_code == 200
        client.cookies.set(COOKIE, rotated, path="/ui")
        assert (await client.get("/ui")).status_code == 303


async def _start_of_a_window(margin: float = 15) -> None:
    """The limit counts per calendar minute: a test that needs a dozen requests in one
    window waits for the next when fewer than ``margin`` seconds of this one are left."""
    left = WINDOW - time.time() % WINDOW
    if left < margin:
        await asyncio.sleep(left + 0.1)


async def test_the_11th_failed_login_in_a_minute_is_429_even_with_the_right_key(
    ingest: IngestServer,
) -> None:
    await _start_of_a_window()
    async with client_at(ingest.url, "127.0.0.21") as guesser:
        csrf = csrf_of((await guesser.get("/ui/login")).text)
        for attempt in range(LIMIT):
            r = await guesser.post("/ui/login", data={"csrf": csrf, "api_key": f"guess-{attempt}"})
            assert r.status_code == 401, attempt
        r = await guesser.post("/ui/login", data={"csrf": csrf, "api_key": "guess-11"})
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= WINDOW
        assert r.headers["content-type"].startswith("text/html")
        assert "too many failed attempts" in r.text
        assert "default-src 'none'" in r.headers["content-security-policy"]
        # Locked means locked: the right key is not even compared until the minute ends
        # (test_login_limit.py shows the lock lifting with the window).
        r = await guesser.post("/ui/login", data={"csrf": csrf, "api_key": ingest.api_key})
        assert r.status_code == 429
        assert "retry-after" in r.headers
        assert COOKIE not in guesser.cookies
        assert (await guesser.get("/ui")).status_code == 303
        # The form itself still shows; only posting it is refused.
        assert (await guesser.get("/ui/login")).status_code == 200
    # Another address is not affected.
    async with client_at(ingest.url, "127.0.0.22") as operator:
        await login(operator, ingest.api_key)
        assert (await operator.get("/ui")).status_code == 200


async def test_posts_without_the_forms_token_do_not_count_as_failed_logins(
    ingest: IngestServer,
) -> None:
    """A cross-site page cannot make an operator's browser lock the operator out."""
    await _start_of_a_window()
    async with client_at(ingest.url, "127.0.0.23") as client:
        for attempt in range(LIMIT + 5):
            r = await client.post("/ui/login", data={"api_key": f"guess-{attempt}"})
            assert r.status_code == 403
        await login(client, ingest.api_key)


async def test_forms_show_validation_errors(
    anonymous: httpx.AsyncClient, ingest: IngestServer
) -> None:
    csrf = await login(anonymous, ingest.api_key)
    r = await anonymous.post(
        "/ui/subscriptions",
        data={"csrf": csrf, "target_url": "ftp://e.com/", "event_types": "ok bad\x01type"},
    )
    assert r.status_code == 422
    assert "must be an absolute http or https URL" in r.text
    assert 'value="ftp://e.com/"' in r.text  # what was typed stays in the form


async def test_the_subscription_form_sets_the_endpoint_controls(
    anonymous: httpx.AsyncClient, ingest: IngestServer
) -> None:
    csrf = await login(anonymous, ingest.api_key)
    form = {"csrf": csrf, "target_url": "https://e.com/hook", "event_types": "order.paid"}
    for controls, complaint in (
        ({"filter": "{not json"}, "not valid JSON"),
        ({"filter": '{"a": {"$bogus": 1}}'}, "$bogus"),
        ({"headers": "X-Team"}, "Name: value"),
        ({"headers": "Content-Type: text/plain"}, "is set by Hookstream"),
        ({"rate_limit": "0"}, "greater than or equal to 1"),
    ):
        r = await anonymous.post("/ui/subscriptions", data={**form, **controls})
        assert r.status_code == 422, controls
        assert complaint in r.text, (controls, complaint)
    r = await anonymous.post(
        "/ui/subscriptions",
        data={
            **form,
            "filter": '{"data.amount": {"$gte": 100}}',
            "headers": "X-Team: payments\nX-Env: prod",
            "rate_limit": "5",
        },
    )
    assert r.status_code == 303
    sub_id = r.headers["location"].split("/")[-1].split("?")[0]
    async with httpx.AsyncClient(base_url=ingest.url, headers=ingest.auth) as operator:
        saved = (await operator.get(f"/subscriptions/{sub_id}")).json()
    assert saved["filter"] == {"data.amount": {"$gte": 100}}
    assert saved["headers"] == {"X-Team": "payments", "X-Env": "prod"}
    assert saved["rate_limit"] == 5
    page = (await anonymous.get(f"/ui/subscriptions/{sub_id}")).text
    assert "X-Team: payments" in page
    assert "5 / s" in page


async def test_unknown_and_malformed_ids_are_404_pages(
    anonymous: httpx.AsyncClient, ingest: IngestServer
) -> None:
    await login(anonymous, ingest.api_key)
    for path in (
        f"/ui/deliveries/{uuid.uuid4()}",
        "/ui/deliveries/nope",
        f"/ui/subscriptions/{uuid.uuid4()}",
    ):
        r = await anonymous.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("text/html")


async def test_the_dashboard_rotates_a_secret_and_sends_a_test_event(
    anonymous: httpx.AsyncClient, ingest: IngestServer
) -> None:
    csrf = await login(anonymous, ingest.api_key)
    r = await anonymous.post(
        "/ui/subscriptions",
        data={"csrf": csrf, "target_url": "https://e.com/hook", "secret_key": "whsec_first"},
    )
    sub_id = r.headers["location"].split("/")[-1].split("?")[0]
    page = await anonymous.post(f"/ui/subscriptions/{sub_id}/secret", data={"csrf": csrf})
    assert page.status_code == 200
    assert "shown this once" in page.text
    secret = page.text.split('id="secret">', 1)[1].split("<", 1)[0]
    assert secret.startswith("whsec_")
    assert secret != "whsec_first"
    # Ingest verifies with the new secret and, during the overlap, the old one.
    body = b'{"type": "order.paid"}'
    for key in (secret, "whsec_first"):
        r = await anonymous.post(f"/ingest/{sub_id}", content=body, headers=hub_headers(key, body))
        assert r.status_code == 202, r.text
    shown = (await anonymous.get(f"/ui/subscriptions/{sub_id}")).text
    assert "the previous one signs too until" in shown
    assert secret not in shown
    r = await anonymous.post(f"/ui/subscriptions/{sub_id}/test", data={"csrf": csrf})
    assert r.status_code == 303
    assert r.headers["location"].endswith(f"/ui/subscriptions/{sub_id}?notice=test-sent")
    assert "A test event is on its way" in (await anonymous.get(r.headers["location"])).text
