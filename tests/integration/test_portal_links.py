"""Portal links over HTTP: one use, expiry, unknown tokens, logout, the login limit."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.support.broker import IngestServer


async def new_link(operator: httpx.AsyncClient, body: dict[str, int] | None = None) -> str:
    app = (await operator.post("/applications", json={"name": "portal"})).json()["id"]
    r = await operator.post(f"/applications/{app}/portal-links", json=body)
    assert r.status_code == 201, r.text
    link = r.json()
    assert link["url"].startswith(str(operator.base_url) + "/portal/login/")
    return str(link["url"])


async def test_a_link_works_once_and_logout_ends_the_session(
    operator: httpx.AsyncClient, module_ingest: IngestServer
) -> None:
    url = await new_link(operator)
    async with httpx.AsyncClient(timeout=15) as browser:
        r = await browser.get(url)
        assert r.status_code == 303
        assert r.headers["location"] == "/portal"
        cookie = r.cookies["hookstream_portal"]
        assert "httponly" in r.headers["set-cookie"].lower()
        assert "samesite=lax" in r.headers["set-cookie"].lower()
        again = await browser.get(url)
        assert again.status_code == 410
        assert "hookstream_portal" not in again.headers.get("set-cookie", "")
    assert cookie not in module_ingest.log()
    assert url.rsplit("/", 1)[1] not in module_ingest.log()


async def test_unknown_and_expired_links_start_no_session(operator: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(timeout=15) as browser:
        r = await browser.get(f"{operator.base_url}/portal/login/not-a-token")
        assert r.status_code == 404
        assert "set-cookie" not in r.headers
    for bad in ({"expires_in": 59}, {"expires_in": 86401}):
        app = (await operator.post("/applications", json={"name": "x"})).json()["id"]
        r = await operator.post(f"/applications/{app}/portal-links", json=bad)
        assert r.status_code == 422


async def test_an_applications_key_makes_links_for_itself_only(
    operator: httpx.AsyncClient,
) -> None:
    mine = (await operator.post("/applications", json={"name": "mine"})).json()["id"]
    theirs = (await operator.post("/applications", json={"name": "theirs"})).json()["id"]
    key = (await operator.post(f"/applications/{mine}/api-keys", json={"name": "k"})).json()
    headers = {"Authorization": f"Bearer {key['key']}"}
    r = await operator.post(f"/applications/{mine}/portal-links", headers=headers)
    assert r.status_code == 201
    r = await operator.post(f"/applications/{theirs}/portal-links", headers=headers)
    assert r.status_code == 404


async def test_guessing_tokens_is_limited_per_address(operator: httpx.AsyncClient) -> None:
    url = await new_link(operator)
    # The limit counts per minute: a burst that straddled a minute's end would count in
    # two windows. Start well inside one.
    if time.time() % 60 > 45:
        await asyncio.sleep(61 - time.time() % 60)
    async with httpx.AsyncClient(base_url=str(operator.base_url), timeout=15) as browser:
        answers = await asyncio.gather(
            *(browser.get(f"/portal/login/guess-{n}") for n in range(12))
        )
        assert [r.status_code for r in answers].count(404) <= 10
        r = await browser.get(url)  # even a good link waits out the minute
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
