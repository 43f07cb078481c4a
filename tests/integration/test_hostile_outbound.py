"""Hostile targets: redirects towards cloud metadata or a neighbour, names that resolve to
loopback, header bytes a sender chose.

The first half drives the dispatcher's own HTTP client (``services.dispatcher.sender``:
``make_client`` + ``post``) in process, against loopback servers, with a tripwire on
its one connection opener that aborts any connection to an address other than 127.0.0.1
before it opens: even a regression cannot send a packet off this machine. The second half
runs the real dispatcher (and ingest) processes on a private namespace and looks at
attempt rows.

tests/integration/test_delivery_e2e.py already shows a 302 to the same server is not
followed, and test_delivery_ssrf.py that literal and ``localhost`` targets are refused.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from aiohttp import web
from yarl import URL

from services.dispatcher import http1, sender
from services.dispatcher.delivery import decide, outcome_of_error, outcome_of_response
from shared.models import AttemptStatus
from shared.records import DeliveryJob
from shared.settings import Settings
from shared.signing import hub_signature
from shared.topics import Topics
from shared.urlsafety import UnsafeTargetError
from tests.support.broker import IngestServer, running_ingest
from tests.support.dispatch import DispatchWorld
from tests.support.procs import ServiceProcess
from tests.support.rawhttp import raw_exchange, status_of
from tests.support.stack import IsolatedStack
from tests.support.targets import TargetServer
from tests.unit.test_urlsafety import StubResolver

METADATA = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
REDIRECTS = [301, 302, 303, 307, 308]


class Tripwire:
    """Watches ``http1.open_connection``, the one place the client connects: records each
    (address, port) and aborts, before connecting, any connection to an address other
    than 127.0.0.1."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.connected: list[tuple[str, int]] = []
        opener = http1.open_connection

        async def watched(
            loop: asyncio.AbstractEventLoop, factory: Any, host: str, port: int, **kw: Any
        ) -> Any:
            if host != "127.0.0.1":
                raise RuntimeError(f"tripwire: a connection to {host}:{port} was about to open")
            self.connected.append((host, port))
            return await opener(loop, factory, host, port, **kw)

        monkeypatch.setattr(http1, "open_connection", watched)


@pytest.fixture
def tripwire(monkeypatch: pytest.MonkeyPatch) -> Tripwire:
    return Tripwire(monkeypatch)


def _settings(*, allow_private: bool) -> Settings:
    return Settings(allow_private_targets=allow_private, delivery_timeout=5)


async def _post(client: http1.Http1Client, url: str) -> http1.Answer:
    return await sender.post(client, URL(url), b'{"n": 1}', {}, excerpt_bytes=256)


# --- the sender, in process ---------------------------------------------------------


@pytest.mark.parametrize("status", REDIRECTS)
async def test_redirects_are_not_followed_to_a_neighbour_or_to_cloud_metadata(
    tripwire: Tripwire, status: int
) -> None:
    async with TargetServer() as target, TargetServer() as neighbour:
        target.reply("/to-neighbour", status, headers={"Location": neighbour.url("/stolen")})
        target.reply("/to-metadata", status, headers={"Location": METADATA})
        # Loopback targets are allowed here (local development), so only the redirect
        # rule stands between the request and the Location.
        client = sender.make_client(_settings(allow_private=True))
        try:
            for path in ("/to-neighbour", "/to-metadata"):
                response = await _post(client, target.url(path))
                assert response.status == status
                outcome = outcome_of_response(response.status, response.retry_after, None)
                assert not outcome.ok
                assert "redirects are not followed" in (outcome.error or "")
        finally:
            await client.close()
    # Only ever the target's port (one kept-alive connection, or a second one).
    assert {port for _, port in tripwire.connected} == {target.port}
    assert neighbour.received() == []
    assert [r.path for r in target.received()] == ["/to-neighbour", "/to-metadata"]


@pytest.mark.parametrize(
    "answer",
    [["127.0.0.1"], ["::ffff:127.0.0.1"], ["127.0.0.1", "127.0.0.2"], ["127.0.0.2"]],
)
async def test_a_name_resolving_to_loopback_is_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch, tripwire: Tripwire, answer: list[str]
) -> None:
    name = "hooks.internal.example"
    stub = StubResolver({name: answer})
    monkeypatch.setattr(sender, "DefaultResolver", lambda: stub)
    async with TargetServer() as target:
        client = sender.make_client(_settings(allow_private=False))
        try:
            with pytest.raises(UnsafeTargetError, match="loopback") as refused:
                await _post(client, f"http://{name}:{target.port}/hook")
        finally:
            await client.close()
        # Refused while resolving, before any connection: nothing can still be on its way.
        assert target.received() == []
    assert stub.asked == [name]
    assert tripwire.connected == []
    # What the delivery stage makes of it: final, with a dead letter, never retried.
    outcome = outcome_of_error(refused.value, timeout=5)
    assert not outcome.retryable
    settings = Settings()
    decision = decide(
        outcome,
        DeliveryJob.for_event(DispatchWorld.event("e", b"{}"), uuid.uuid4()),
        topics=Topics.from_settings(settings),
        schedule=settings.retry_schedule,
        jitter=0,
        now=datetime.now(UTC),
    )
    assert (decision.status, decision.dead_letter, decision.retry) == (
        AttemptStatus.FAILURE,
        True,
        None,
    )


async def _refused(host: str, match: str) -> UnsafeTargetError:
    """POST to ``host`` with the guard on: refused before anything reaches the target."""
    async with TargetServer() as target:
        client = sender.make_client(_settings(allow_private=False))
        try:
            with pytest.raises(UnsafeTargetError, match=match) as refused:
                await _post(client, f"http://{host}:{target.port}/hook")
        finally:
            await client.close()
        assert target.received() == []
    return refused.value


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]", "[::1]", "127.0.0.2"])
async def test_a_literal_loopback_address_is_refused_by_the_client_itself(
    tripwire: Tripwire, host: str
) -> None:
    # The delivery stage refuses these with check_url before asking the client; the
    # client refuses them again, so no caller can skip the guard.
    await _refused(host, "loopback")
    assert tripwire.connected == []


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "0177.0.0.1", "127.1"])
async def test_other_spellings_of_loopback_are_refused_for_good(
    tripwire: Tripwire, host: str
) -> None:
    # Not IP literals to Python; getaddrinfo reads them as 127.0.0.1 (no DNS involved)
    # and the guard refuses the answer.
    refused = await _refused(host, "loopback")
    assert tripwire.connected == []
    outcome = outcome_of_error(refused, timeout=5)
    assert not outcome.retryable, outcome
    assert (outcome.error or "").startswith("blocked target"), outcome


# --- the dispatcher and ingest as processes -----------------------------------------


@pytest.fixture(scope="module")
def processes(
    module_stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimpleNamespace]:
    log_dir: Path = tmp_path_factory.mktemp("outbound")
    dispatcher = ServiceProcess(
        module_stack, "dispatcher", log_dir=log_dir, HOOKSTREAM_SUBSCRIPTION_CACHE_TTL="1"
    )
    try:
        with running_ingest(module_stack, log_dir) as ingest:
            yield SimpleNamespace(dispatcher=dispatcher, ingest=ingest)
    finally:
        assert dispatcher.stop() == 0, dispatcher.log()[-3000:]


@pytest.mark.usefixtures("processes")  # the dispatcher that makes the attempt
async def test_a_redirect_to_cloud_metadata_is_a_failed_attempt_and_goes_nowhere(
    world: DispatchWorld,
) -> None:
    async with TargetServer() as target, TargetServer() as neighbour:
        target.reply("/to-neighbour", 307, headers={"Location": neighbour.url("/stolen")})
        target.reply("/to-metadata", 302, headers={"Location": METADATA})
        # The neighbour first: only once redirects are shown not to be followed is a job
        # with a metadata Location produced (so a regression cannot reach 169.254/16).
        for path, status in (("/to-neighbour", 307), ("/to-metadata", 302)):
            sub = await world.add_subscription(target.url(path), secret="s")
            job = DeliveryJob.for_event(world.event("hostile.redirect", b'{"n": 1}'), sub)
            await world.produce_job(job)
            (row,) = await world.wait_attempts("delivery_id = :d", d=job.delivery_id)
            assert (row["status"], row["status_code"], row["attempt_number"]) == (
                "FAILED_ATTEMPT",
                status,
                1,
            )
            assert "redirects are not followed" in row["error_details"]
            # A followed redirect would have happened before the row was written.
            assert neighbour.received() == []
            assert len(target.received(path)) == 1


@pytest.fixture
async def raw_target() -> AsyncIterator[SimpleNamespace]:
    """A target that keeps the raw header bytes of what it receives."""
    seen: list[list[tuple[bytes, bytes]]] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        seen.append(list(request.raw_headers))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/hook", seen=seen)
    await runner.cleanup()


def _raw_post(ingest: IngestServer, sub_id: str, event_type: bytes, body: bytes) -> bytes:
    """POST /ingest with an x-webhook-event of arbitrary bytes (httpx would refuse them)."""
    request = (
        b"POST /ingest/" + sub_id.encode() + b" HTTP/1.1\r\nHost: hookstream\r\n"
        b"Content-Type: application/json\r\nx-hub-signature-256: "
        + hub_signature("s", body).encode()
        + b"\r\nx-webhook-event: "
        + event_type
        + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        + body
    )
    return raw_exchange(ingest.port, request)


@pytest.mark.parametrize(
    "event_type",
    [
        b"a b",
        b"a\tb",
        b"\xff\xfe",
        "é".encode(),
    ],
)
async def test_an_odd_event_type_reaches_the_target_byte_for_byte_or_is_refused(
    processes: SimpleNamespace, raw_target: SimpleNamespace, event_type: bytes
) -> None:
    ingest: IngestServer = processes.ingest
    async with httpx.AsyncClient(base_url=ingest.url, headers=ingest.auth, timeout=15) as client:
        r = await client.post(
            "/subscriptions/", json={"target_url": raw_target.url, "secret_key": "s"}
        )
        assert r.status_code == 201, r.text
        sub_id = r.json()["id"]
    # No wait for the dispatcher's cache: an id it lacks is looked up in PostgreSQL.
    answer = await asyncio.to_thread(_raw_post, ingest, sub_id, event_type, b'{"odd": 1}')
    status = status_of(answer)
    assert status in (202, 400, 422), answer[:300]
    if status != 202:
        return
    async with asyncio.timeout(20):
        while not raw_target.seen:
            await asyncio.sleep(0.1)
    received = {name.lower(): value for name, value in raw_target.seen[0]}
    assert received[b"x-webhook-event"] == event_type
