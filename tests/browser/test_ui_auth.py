"""The dashboard's gate, over HTTP: login, the session cookie, CSRF on every form.

No browser needed: these are the answers a browser would get.
"""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import pytest

from tests.browser.conftest import csrf_of, login
from tests.support.broker import IngestServer

PAGES = ["/ui", "/ui/subscriptions", "/ui/subscriptions/new", "/ui/dlq"]


@pytest.mark.parametrize("path", PAGES)
async def test_pages_need_a_login(anonymous: httpx.AsyncClient, path: str) -> None:
    r = await anonymous.get(path)
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/login?next=" + path.replace("/", "%2F")


async def test_login_sets_a_signed_httponly_strict_cookie(
    anonymous: httpx.AsyncClient, ingest: IngestServer
) -> None:
    form = await anonymous.get("/ui/login")
    assert form.status_code == 200
    assert "default-src 'none'" in form.headers["content-security-policy"]
    r = await anonymous.post(
        "/ui/login",
        data={"csrf": csrf_of(form.text), "api_key": ingest.api_key, "next": "/ui/dlq"},
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/dlq"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower()
    assert "Path=/ui" in cookie
    assert ingest.api_key not in cookie
    page = await anonymous.get("/ui/dlq")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"


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
    value = anonymous.cookies["hookstream_ui"]
    payload, mac = value.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["c"] = "chosen-by-the-attacker"
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    for bad in (f"{forged}.{mac}", f"{payload}.{mac[:-2]}AA", "garbage", ""):
        anonymous.cookies.clear()
        anonymous.cookies.set("hookstream_ui", bad, path="/ui")
        assert (await anonymous.get("/ui")).status_code == 303, bad


async def test_login_form_has_csrf_too(anonymous: httpx.AsyncClient, ingest: IngestServer) -> None:
    await anonymous.get("/ui/login")
    r = await anonymous.post("/ui/login", data={"api_key": ingest.api_key})
    assert r.status_code == 403
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


async def test_logout_ends_the_session(anonymous: httpx.AsyncClient, ingest: IngestServer) -> None:
    csrf = await login(anonymous, ingest.api_key)
    stolen = anonymous.cookies["hookstream_ui"]
    r = await anonymous.post("/ui/logout", data={"csrf": csrf})
    assert r.status_code == 303
    assert (await anonymous.get("/ui")).status_code == 303
    # The cookie is stateless: a copy taken before logout stays valid until it expires
    # (MAX_AGE_SECONDS) or the API key changes. Documented, not hidden.
    anonymous.cookies.set("hookstream_ui", stolen, path="/ui")
    assert (await anonymous.get("/ui")).status_code == 200


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
