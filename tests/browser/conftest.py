"""Fixtures for the dashboard tests: an ingest process (and a dispatcher) on a private
database and topic prefix, a logged-in HTTP client, and headless Chromium.

Chromium is Debian's (``make browser`` installs it); Playwright drives it and never
downloads a browser of its own. Without it these tests skip on a developer's machine and
fail under CI, where a missing browser is a broken setup, not a reason to pass.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.support.broker import IngestServer, running_ingest
from tests.support.procs import ServiceProcess
from tests.support.stack import ROOT, IsolatedStack

ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium phones home (updates, sync, field trials); this machine
    # refuses every connection beyond loopback.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def chromium_path() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if found is None:
        reason = "Debian's chromium is not installed (make browser installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason + ": browser tests must run under CI")
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def ingest(
    module_stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IngestServer]:
    with running_ingest(module_stack, tmp_path_factory.mktemp("ui-ingest")) as server:
        yield server
    assert "Traceback" not in server.log(), server.log()[-3000:]


@pytest.fixture(scope="module")
def dispatcher(
    module_stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(
        module_stack,
        "dispatcher",
        log_dir=tmp_path_factory.mktemp("ui-dispatcher"),
        HOOKSTREAM_SUBSCRIPTION_CACHE_TTL="1",
    )
    yield proc
    assert proc.stop() == 0, proc.log()[-3000:]


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


async def login(client: httpx.AsyncClient, api_key: str) -> str:
    """Logs ``client`` in through the form; returns the session's CSRF token."""
    form = await client.get("/ui/login")
    r = await client.post(
        "/ui/login", data={"csrf": csrf_of(form.text), "api_key": api_key, "next": "/ui"}
    )
    assert r.status_code == 303, r.text
    return csrf_of((await client.get("/ui")).text)


@pytest.fixture
async def anonymous(ingest: IngestServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ingest.url, timeout=15) as client:
        yield client


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
async def page(browser: Browser, ingest: IngestServer) -> AsyncIterator[Page]:
    context = await browser.new_context(
        base_url=ingest.url, viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(15_000)
    page = await context.new_page()
    yield page
    await context.close()


async def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def browser_login(page: Page, api_key: str) -> None:
    await page.goto("/ui")
    assert "/ui/login" in page.url
    await page.fill("#api_key", api_key)
    await page.click("button[type=submit]:has-text('Log in')")
    await page.wait_for_url("**/ui")


async def send(ingest: IngestServer, sub_id: str, body: bytes, event_type: str) -> uuid.UUID:
    async with httpx.AsyncClient(base_url=ingest.url, timeout=15) as client:
        r = await client.post(
            f"/ingest/{sub_id}",
            content=body,
            headers={"content-type": "application/json", "x-webhook-event": event_type},
        )
    assert r.status_code == 202, r.text
    return uuid.UUID(r.json()["delivery_id"])


async def reload_until(page: Page, selector: str, timeout: float = 30) -> None:
    """Attempt rows are written after the target answered: reload until one shows."""
    deadline = time.monotonic() + timeout
    while await page.locator(selector).count() == 0:
        assert time.monotonic() < deadline, f"{selector} never appeared on {page.url}"
        await page.wait_for_timeout(300)
        await page.reload()
