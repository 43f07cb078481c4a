"""The ``hookstream`` command line against the real stack: an ingest process and a dispatcher
process on the module's database and topics, PostgreSQL, Redis, Kafka and an HTTP target
on 127.0.0.1.

Commands run in-process through ``hookstream_cli.main.run`` (in a thread, so the target
in this event loop keeps answering), and as the installed console script where the
process itself is the point (tail until Ctrl-C, a server that is down). What a command
claims is checked against the API or the target, not only against its own output.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from hookstream_cli.main import build_parser, run
from shared.db import asyncpg_dsn
from shared.records import EventRecord
from tests.support.broker import IngestServer
from tests.support.dispatch import DispatchWorld
from tests.support.procs import ServiceProcess, free_port, running_service
from tests.support.stack import IsolatedStack
from tests.support.targets import Received, TargetServer

HOOKSTREAM = Path(sys.executable).parent / "hookstream"
BACKFILL_RATE = 200


@pytest.fixture(scope="module")
def dispatcher(
    module_stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """No retries: a failed first attempt is final at once, so retry and replay have a
    FAILURE to act on without waiting for a retry scheduler."""
    with running_service(
        module_stack,
        "dispatcher",
        tmp_path_factory.mktemp("dispatcher"),
        HOOKSTREAM_RETRY_SCHEDULE="",
        HOOKSTREAM_SUBSCRIPTION_CACHE_TTL="1",
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def janitor(
    module_stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """Runs backfills at 200 jobs/s: the worker publishes 500 at a time (janitor/backfill.py
    STEP), so one of 3,000 events shows progress after 2.5 s and runs for 15 s."""
    with running_service(
        module_stack,
        "janitor",
        tmp_path_factory.mktemp("janitor"),
        HOOKSTREAM_BACKFILL_MAX_RATE=str(BACKFILL_RATE),
    ) as proc:
        yield proc


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    """``hookstream`` pointed at the module's ingest with the operator key."""

    def __init__(self, server: IngestServer) -> None:
        self.server = server
        self.env = {"HOOKSTREAM_URL": server.url, "HOOKSTREAM_API_KEY": server.api_key}

    async def __call__(
        self, *argv: str, stdin: bytes = b"", env: dict[str, str] | None = None
    ) -> Result:
        return await asyncio.to_thread(self.sync, *argv, stdin=stdin, env=env)

    def sync(self, *argv: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> Result:
        out, err = io.StringIO(), io.StringIO()
        code = run(
            list(argv),
            stdin=io.BytesIO(stdin),
            stdout=out,
            stderr=err,
            env=self.env if env is None else env,
        )
        return Result(code, out.getvalue(), err.getvalue())

    async def ok(self, *argv: str, stdin: bytes = b"") -> Result:
        result = await self(*argv, stdin=stdin)
        assert result.code == 0, (argv, result)
        assert "Traceback" not in result.out + result.err
        return result

    async def fails(self, *argv: str, env: dict[str, str] | None = None) -> str:
        """The one line a refused command prints on stderr."""
        result = await self(*argv, env=env)
        assert result.code == 1, (argv, result)
        assert result.out == ""
        lines = result.err.splitlines()
        assert len(lines) == 1, result.err
        assert lines[0].startswith("hookstream: error: ")
        return lines[0].removeprefix("hookstream: error: ")

    async def misused(self, *argv: str) -> str:
        """The one line a command with bad arguments prints (exit 2, nothing sent)."""
        result = await self(*argv)
        assert result.code == 2, (argv, result)
        assert result.out == ""
        lines = result.err.splitlines()
        assert len(lines) == 1, result.err
        assert lines[0].startswith("hookstream: error: ")
        return lines[0].removeprefix("hookstream: error: ")


@pytest.fixture
def hs(module_ingest: IngestServer) -> Cli:
    return Cli(module_ingest)


def kind() -> str:
    return f"order.paid.{uuid.uuid4().hex[:8]}"


async def eventually(
    probe: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 30
) -> Any:
    """Polls ``probe`` until ``done`` (attempt rows are written in batches: no event to
    await from outside the dispatcher)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"still not done: {value}"
        await asyncio.sleep(0.2)


async def delivery_state(hs: Cli, delivery_id: str, wanted: str) -> dict[str, Any]:
    """The delivery once its latest attempt has the wanted status."""
    result = await eventually(
        lambda: hs("deliveries", "show", delivery_id, "--json"),
        lambda r: r.code == 0 and r.json()["latest_status"] == wanted,
    )
    return dict(result.json())


def verify_args(secret: str, received: Received) -> list[str]:
    argv = ["verify", "--secret", secret]
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature", "x-hub-signature-256"):
        argv += ["--header", f"{name}: {received.headers[name]}"]
    return argv


# --- every command ------------------------------------------------------------------


def command_paths(parser: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):
            for name, sub in choices.items():
                yield (*prefix, name)
                yield from command_paths(sub, (*prefix, name))


def test_every_command_has_help_and_the_console_script_is_installed(
    module_ingest: IngestServer,
) -> None:
    paths = list(command_paths(build_parser()))
    assert {p[0] for p in paths} >= {
        "applications",
        "subscriptions",
        "keys",
        "portal-link",
        "send",
        "publish",
        "deliveries",
        "events",
        "retry",
        "replay",
        "backfill",
        "backfills",
        "verify",
    }
    assert ("deliveries", "tail") in paths
    assert ("events", "list") in paths
    assert ("backfills", "cancel") in paths
    assert ("keys", "revoke") in paths
    cli = Cli(module_ingest)
    for path in paths:
        result = cli.sync(*path, "--help")
        assert result.code == 0, (path, result)
        assert result.out.startswith(f"usage: hookstream {' '.join(path)}"), result.out
    done = subprocess.run([HOOKSTREAM, "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "portal-link" in done.stdout


# --- applications, keys, portal links -------------------------------------------------


async def test_applications_keys_and_portal_links(hs: Cli, operator: httpx.AsyncClient) -> None:
    uid = f"cli-{uuid.uuid4().hex[:8]}"
    made = (
        await hs.ok(
            "applications",
            "create",
            "--name",
            "Acme",
            "--uid",
            uid,
            "--metadata",
            '{"plan": "pro"}',
            "--json",
        )
    ).json()
    stored = (await operator.get(f"/applications/{uid}")).json()
    assert stored["id"] == made["id"]
    assert stored["metadata"] == {"plan": "pro"}

    listed = await hs.ok("applications", "list", "--limit", "250")
    assert any(line.split()[:2] == [made["id"], uid] for line in listed.out.splitlines())
    shown = await hs.ok("applications", "show", uid)
    assert f"id:       {made['id']}" in shown.out
    await hs.ok("applications", "update", uid, "--name", "Acme Corp")
    assert (await operator.get(f"/applications/{uid}")).json()["name"] == "Acme Corp"
    assert (await hs("applications", "update", uid)).code == 2

    created = await hs.ok("keys", "create", uid, "--name", "ci", "--json")
    key = created.json()
    assert key["key"].startswith("hsk_")
    scoped = {"HOOKSTREAM_URL": hs.server.url, "HOOKSTREAM_API_KEY": key["key"]}
    assert (await hs("subscriptions", "list", env=scoped)).code == 0
    refused = await hs.fails("applications", "list", env=scoped)
    assert refused.startswith("forbidden: this route needs the operator key")
    keys = await hs.ok("keys", "list", uid)
    assert key["id"] in keys.out
    assert key["key"] not in keys.out

    await hs.ok("keys", "revoke", uid, key["id"])
    refused = await eventually(
        lambda: hs("subscriptions", "list", env=scoped), lambda r: r.code == 1, timeout=5
    )
    assert refused.err.startswith("hookstream: error: the API key was refused (HTTP 401")
    assert key["id"] not in (await hs.ok("keys", "list", uid, "--json")).out

    link = await hs.ok("portal-link", uid, "--expires-in", "10m")
    url = link.out.strip()
    assert url.startswith(f"{hs.server.url}/portal/login/")
    assert "usable once" in link.err
    async with httpx.AsyncClient(timeout=10) as browser:
        assert (await browser.get(url)).status_code < 400
        assert (await browser.get(url)).status_code == 410

    await hs.ok("applications", "delete", uid)
    assert (await operator.get(f"/applications/{uid}")).status_code == 404
    missing = await hs.fails("applications", "show", uid)
    assert missing == "not found: application not found (HTTP 404)"


# --- subscriptions ------------------------------------------------------------------


async def test_subscription_crud(hs: Cli, operator: httpx.AsyncClient) -> None:
    event = kind()
    made = await hs.ok(
        "subscriptions", "create", "--target", "https://example.com/hook", "--generate-secret",
        "--event", event, "--header", "X-Team: billing", "--rate-limit", "5", "--json",
    )  # fmt: skip
    sub = made.json()
    assert sub["secret_key"].startswith("whsec_")
    stored = (await operator.get(f"/subscriptions/{sub['id']}")).json()
    assert stored["event_types"] == [event]
    assert stored["headers"] == {"X-Team": "billing"}
    assert stored["rate_limit"] == 5
    assert "secret_key" not in stored

    human = await hs.ok("subscriptions", "create", "--target", "https://example.com/other")
    assert "secret:" not in human.out
    assert "events:      every type" in human.out

    assert sub["id"] in (await hs.ok("subscriptions", "list", "--limit", "1000")).out
    page = (await hs.ok("subscriptions", "list", "--app", "default", "--json")).json()
    assert sub["id"] in {s["id"] for s in page["data"]}
    shown = await hs.ok("subscriptions", "show", sub["id"])
    assert f"events:      {event}" in shown.out
    assert "ordered:     no" in shown.out
    assert sub["secret_key"] not in shown.out
    assert sub["ordered"] is False

    ordered = (
        await hs.ok(
            "subscriptions", "create", "--target", "https://example.com/o", "--ordered", "--json"
        )
    ).json()
    assert (await operator.get(f"/subscriptions/{ordered['id']}")).json()["ordered"] is True
    assert "ordered:     yes" in (await hs.ok("subscriptions", "show", ordered["id"])).out
    await hs.ok("subscriptions", "update", ordered["id"], "--no-ordered")
    assert (await operator.get(f"/subscriptions/{ordered['id']}")).json()["ordered"] is False
    await hs.ok("subscriptions", "update", ordered["id"], "--ordered")
    assert (await operator.get(f"/subscriptions/{ordered['id']}")).json()["ordered"] is True

    await hs.ok(
        "subscriptions", "update", sub["id"], "--inactive", "--event", "a.b", "--event", "c.d",
        "--no-headers",
    )  # fmt: skip
    stored = (await operator.get(f"/subscriptions/{sub['id']}")).json()
    assert (stored["is_active"], stored["event_types"], stored["headers"]) == (
        False,
        ["a.b", "c.d"],
        None,
    )
    assert (await hs("subscriptions", "update", sub["id"])).code == 2
    bad = await hs.fails("subscriptions", "update", sub["id"], "--target", "ftp://example.com/")
    assert bad.startswith("invalid input: target_url: ")
    assert bad.endswith("(HTTP 422)")

    await hs.ok("subscriptions", "delete", sub["id"])
    assert (await operator.get(f"/subscriptions/{sub['id']}")).status_code == 404
    assert await hs.fails("subscriptions", "show", sub["id"]) == (
        "not found: subscription not found (HTTP 404)"
    )
    assert (await hs.fails("subscriptions", "show", "nope")).startswith(
        "invalid input: subscription_id:"
    )


# --- sending ------------------------------------------------------------------------


@pytest.mark.usefixtures("dispatcher")
async def test_send_signs_and_the_target_gets_the_exact_bytes(
    hs: Cli, target: TargetServer, tmp_path: Path
) -> None:
    event = kind()
    sub = (
        await hs.ok(
            "subscriptions",
            "create",
            "--target",
            target.url("/paid"),
            "--generate-secret",
            "--event",
            event,
            "--json",
        )
    ).json()
    secret = sub["secret_key"]
    body = b'{ "invoice" : 7,\n  "total": 12.50 }'
    path = tmp_path / "event.json"
    path.write_bytes(body)

    sent = await hs.ok(
        "send", sub["id"], "--event", event, "--data", f"@{path}", "--secret", secret
    )
    assert sent.out.startswith("accepted: delivery ")
    delivery_id = sent.out.split()[2]
    [received] = await target.wait_for(1, "/paid")
    assert received.body == body
    assert received.headers["webhook-id"] == delivery_id
    # The receiver's side, with the secret the subscription was created with.
    checked = await hs.ok(*verify_args(secret, received), stdin=received.body)
    assert checked.out.count("valid: ") == 2
    assert (await hs(*verify_args(secret, received), stdin=body + b" ")).code == 1

    unsigned = await hs.fails("send", sub["id"], "--event", event, "--data", '{"a": 1}')
    assert unsigned.startswith("the signature was refused (HTTP 401")
    assert unsigned.endswith("pass it with --secret")
    wrong = await hs.fails(
        "send", sub["id"], "--event", event, "--data", '{"a": 1}', "--secret", "whsec_AAAA"
    )
    assert wrong.endswith("--secret is not this subscription's secret")
    filtered = await hs.ok(
        "send", sub["id"], "--event", "other.type", "--data", '{"a": 1}', "--secret", secret
    )
    assert filtered.out.startswith("filtered (event_type_not_subscribed)")
    assert (await hs("send", sub["id"], "--event", event, "--data", "{not json")).code == 2

    state = await delivery_state(hs, delivery_id, "SUCCESS")
    assert state["total_attempts"] == 1
    shown = await hs.ok("deliveries", "show", delivery_id)
    assert f"delivery:     {delivery_id}" in shown.out
    assert "SUCCESS" in shown.out
    assert len(target.received("/paid")) == 1


@pytest.mark.usefixtures("dispatcher")
async def test_publish_reaches_the_application_subscriptions(
    hs: Cli, target: TargetServer, operator: httpx.AsyncClient
) -> None:
    uid = f"pub-{uuid.uuid4().hex[:8]}"
    assert (await operator.post("/applications", json={"uid": uid, "name": "P"})).status_code == 201
    event = kind()
    await hs.ok(
        "subscriptions", "create", "--app", uid, "--target", target.url("/pub"), "--event", event
    )
    published = await hs.ok(
        "publish", "--app", uid, "--event", event, "--data", "@-", stdin=b'{"n": 1}'
    )
    assert published.out.startswith("accepted: event ")
    [received] = await target.wait_for(1, "/pub")
    assert received.body == b'{"n": 1}'
    assert received.headers["x-webhook-event"] == event
    missing = await hs.fails("publish", "--app", "no-such-app", "--event", event, "--data", "{}")
    assert missing == "not found: application not found (HTTP 404)"


# --- failures, redelivery, tail -------------------------------------------------------


@pytest.mark.usefixtures("dispatcher")
async def test_failed_deliveries_list_retry_replay_and_tail(hs: Cli, target: TargetServer) -> None:
    target.reply("/flaky", 500, body=b"down for maintenance")
    event = kind()
    sub = (
        await hs.ok("subscriptions", "create", "--target", target.url("/flaky"), "--json")
    ).json()
    first, second = [
        (await hs.ok("send", sub["id"], "--event", event, "--data", f'{{"n": {n}}}')).out.split()[2]
        for n in (1, 2)
    ]
    for delivery_id in (first, second):
        failed = await delivery_state(hs, delivery_id, "FAILURE")
        assert failed["latest_attempt"]["status_code"] == 500

    everywhere = (
        await hs.ok("deliveries", "list", "--status", "FAILURE", "--since", "1h", "--json")
    ).json()
    assert {first, second} <= {row["delivery_id"] for row in everywhere["data"]}
    mine = (await hs.ok("deliveries", "list", "--subscription", sub["id"], "--json")).json()
    assert mine["next_cursor"] is None
    assert sorted((r["delivery_id"], r["status"], r["status_code"]) for r in mine["data"]) == (
        sorted([(first, "FAILURE", 500), (second, "FAILURE", 500)])
    )
    times = [r["latest_attempt_at"] for r in mine["data"]]
    assert times == sorted(times, reverse=True)
    newest, older = [r["delivery_id"] for r in mine["data"]]
    by_type = (
        await hs.ok("deliveries", "list", "--event", event, "--app", "default", "--json")
    ).json()
    assert [r["delivery_id"] for r in by_type["data"]] == [newest, older]
    none = await hs.ok(
        "deliveries", "list", "--subscription", sub["id"], "--status", "success", "--json"
    )
    assert none.json() == {"data": [], "next_cursor": None}
    walked = await hs.ok("deliveries", "list", "--since", "1h", "--limit", "1000")
    assert first in walked.out
    assert (
        await hs.ok(
            "deliveries", "list", "--subscription", sub["id"], "--since", "2099-01-01T00:00:00Z",
            "--json",
        )
    ).json()["data"] == []  # fmt: skip

    # One at a time: the cursor printed goes on where the listing stopped.
    page = await hs.ok("deliveries", "list", "--event", event, "--limit", "1")
    header, row, more = page.out.splitlines()
    assert header.split()[:3] == ["AT", "DELIVERY", "STATUS"]
    assert row.split()[2:5] == [newest, "FAILURE", "1"]
    assert more.startswith("more: --cursor ")
    rest = await hs.ok(
        "deliveries", "list", "--event", event, "--cursor", more.split()[-1], "--json"
    )
    assert [r["delivery_id"] for r in rest.json()["data"]] == [older]

    bad = await hs.misused("deliveries", "list", "--since", "yesterday")
    assert bad == (
        "--since: 'yesterday' is neither a duration (30m, 1h, 2d) nor a date-time with an "
        "offset (2026-01-31T12:00:00Z)"
    )
    assert await hs.misused("deliveries", "list", "--since", "1h", "--until", "2h") == (
        "--since must be earlier than --until"
    )
    assert await hs.fails("deliveries", "list", "--app", "no-such-app") == (
        "not found: application not found (HTTP 404)"
    )

    # Follow the subscription as the console script does, then retry the first delivery.
    env = {**os.environ, **hs.env}
    tail = subprocess.Popen(
        [HOOKSTREAM, "deliveries", "tail", "--subscription", sub["id"], "--lines", "0",
         "--interval", "0.2", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert tail.stderr is not None
        assert tail.stdout is not None
        ready = await asyncio.wait_for(asyncio.to_thread(tail.stderr.readline), 30)
        assert ready.startswith(f"following deliveries of subscription {sub['id']}"), ready
        target.reply("/flaky", 200)
        retried = await hs.ok("retry", first)
        assert retried.out == f"queued: delivery {first} again (manual-retry)\n"
        line = await asyncio.wait_for(asyncio.to_thread(tail.stdout.readline), 30)
        attempt = json.loads(line)
        assert (attempt["delivery_id"], attempt["status"], attempt["trigger"]) == (
            first,
            "SUCCESS",
            "manual-retry",
        )
        tail.send_signal(signal.SIGINT)
        assert tail.wait(10) == 130
        assert "Traceback" not in tail.stderr.read()
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    await delivery_state(hs, first, "SUCCESS")

    replayed = await hs.ok("replay", sub["id"], "--since", "1h")
    head, *listed = replayed.out.splitlines()
    assert head.startswith("queued: 1 failed deliveries again (failed since ")
    assert listed == [f"  {second}"]
    state = await delivery_state(hs, second, "SUCCESS")
    assert state["latest_attempt"]["trigger"] == "replay"

    caught_up = await hs.ok(
        "deliveries", "tail", "--subscription", sub["id"], "--lines", "2", "--count", "2", "--json"
    )
    assert [json.loads(line)["delivery_id"] for line in caught_up.out.splitlines()] == [
        first,
        second,
    ]

    unknown = str(uuid.uuid4())
    assert await hs.fails("retry", unknown) == (
        "not found: no attempts recorded for this delivery (HTTP 404)"
    )
    assert await hs.fails("deliveries", "show", unknown) == (
        "not found: no attempts recorded for this delivery (HTTP 404)"
    )
    assert await hs.fails("replay", unknown) == "not found: subscription not found (HTTP 404)"


# --- search ---------------------------------------------------------------------------


async def test_events_list_filters_and_pages(hs: Cli, operator: httpx.AsyncClient) -> None:
    uid = f"ev-{uuid.uuid4().hex[:8]}"
    app = (await operator.post("/applications", json={"uid": uid, "name": "E"})).json()
    event = kind()
    published = [
        (
            await hs.ok("publish", "--app", uid, "--event", event, "--data", f'{{"n": {n}}}')
        ).out.split()[2]
        for n in range(3)
    ]
    await hs.ok("publish", "--event", event, "--data", "{}")  # the default application

    listed = (await hs.ok("events", "list", "--event", event, "--app", uid, "--json")).json()
    assert [e["event_id"] for e in listed["data"]] == published[::-1]
    assert {(e["application_id"], e["size_bytes"]) for e in listed["data"]} == {(app["id"], 8)}
    assert listed["next_cursor"] is None
    by_id = (await hs.ok("events", "list", "--event", event, "--app", app["id"], "--json")).json()
    assert by_id == listed
    both = (await hs.ok("events", "list", "--event", event, "--since", "10m", "--json")).json()
    assert len(both["data"]) == 4

    page = await hs.ok("events", "list", "--event", event, "--app", uid, "--limit", "2")
    header, *rows, more = page.out.splitlines()
    assert header.split()[:3] == ["RECEIVED", "EVENT", "TYPE"]
    assert [r.split()[2] for r in rows] == published[:0:-1]
    rest = await hs.ok(
        "events", "list", "--event", event, "--app", uid, "--cursor", more.split()[-1], "--json"
    )
    assert [e["event_id"] for e in rest.json()["data"]] == published[:1]

    later = await hs.ok("events", "list", "--event", event, "--since", "2099-01-01T00:00:00Z")
    assert later.out == "(none)\n"
    assert await hs.misused("events", "list", "--until", "2026-01-01") == (
        "--until: '2026-01-01' is neither a duration (30m, 1h, 2d) nor a date-time with an "
        "offset (2026-01-31T12:00:00Z)"
    )
    assert await hs.misused("events", "list", "--limit", "0") == "--limit must be at least 1"


async def test_deliveries_list_follows_the_cursor_past_empty_pages(
    hs: Cli, module_stack: IsolatedStack
) -> None:
    """A deliveries page looks at 2,000 attempts at most: 2,000 deliveries that were
    retrying and succeeded since hide the one still retrying behind an empty page."""
    sub, event = uuid.uuid4(), kind()
    base = datetime.now(UTC) - timedelta(hours=3)
    retrying = uuid.uuid4()
    rows = [(retrying, base, 1, "FAILED_ATTEMPT")]
    for n in range(2000):
        delivery = uuid.uuid4()
        at = base + timedelta(seconds=1 + n / 1000)
        rows += [
            (delivery, at, 1, "FAILED_ATTEMPT"),
            (delivery, at + timedelta(hours=1), 2, "SUCCESS"),
        ]
    conn = await asyncpg.connect(asyncpg_dsn(module_stack.settings()))
    try:
        await conn.executemany(
            "INSERT INTO delivery_attempts (id, created_at, delivery_id, event_id,"
            " subscription_id, target_url, event_type, attempt_number, status_code, status,"
            " trigger, first_received_at) VALUES ($1, $2, $3, $4, $5, 'https://t.example/',"
            " $6, $7, 503, $8, 'ingest', $2)",
            [(uuid.uuid4(), at, d, uuid.uuid4(), sub, event, n, status)
             for d, at, n, status in rows],
        )  # fmt: skip
    finally:
        await conn.close()
    first_page = (
        await hs.ok("deliveries", "list", "--subscription", str(sub), "--status",
                    "FAILED_ATTEMPT", "--limit", "5", "--json")
    ).json()  # fmt: skip
    assert [(r["delivery_id"], r["status"]) for r in first_page["data"]] == [
        (str(retrying), "FAILED_ATTEMPT")
    ]
    assert first_page["next_cursor"] is None


# --- backfill -----------------------------------------------------------------------


@pytest.mark.usefixtures("dispatcher", "janitor")
async def test_backfill_waits_until_done_and_says_what_it_did(
    hs: Cli, target: TargetServer
) -> None:
    event = kind()
    for n in range(3):
        await hs.ok("publish", "--event", event, "--data", f'{{"n": {n}}}')
    # Created after the events: only a backfill gives it them.
    sub = (
        await hs.ok("subscriptions", "create", "--target", target.url("/late"), "--event", event,
                    "--json")
    ).json()  # fmt: skip

    done = await hs.ok("backfill", sub["id"], "--since", "5m", "--wait", "--json")
    state = done.json()
    assert (state["status"], state["matched"], state["published"]) == ("done", 3, 3)
    assert state["subscription_id"] == sub["id"]
    progress = done.err.splitlines()
    assert progress[0] == f"backfill {state['id']}: waiting until it ends (Ctrl-C stops waiting)"
    assert progress[-1].startswith("done: ")
    assert progress[-1].endswith("3 matched, 3 published")
    got = await target.wait_for(3, "/late")
    assert sorted(g.body for g in got) == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']

    shown = await hs.ok("backfills", "show", state["id"])
    assert "status:       done" in shown.out
    assert "published:    3" in shown.out
    ended = await hs.ok("backfills", "cancel", state["id"])
    assert ended.out == (
        f"backfill {state['id']} had already ended: done: {state['scanned']} events read, "
        "3 matched, 3 published\n"
    )
    delivered = await eventually(
        lambda: hs("deliveries", "list", "--subscription", sub["id"], "--json"),
        lambda r: len(r.json()["data"]) == 3,
    )
    assert {r["trigger"] for r in delivered.json()["data"]} == {"backfill"}

    # Without --wait: the backfill, at once, still running or already done.
    started = await hs.ok("backfill", sub["id"], "--since", "5m")
    assert started.out.startswith("id:")
    assert "hookstream backfills show " in started.err


@pytest.mark.usefixtures("dispatcher", "janitor")
async def test_a_backfill_cancelled_while_waiting_ends_the_wait_with_an_error(
    hs: Cli, target: TargetServer, world: DispatchWorld
) -> None:
    event = kind()
    since = datetime.now(UTC) - timedelta(seconds=1)
    await world.produce_events(
        [
            EventRecord(
                event_id=uuid.uuid4(),
                event_type=event,
                received_at=datetime.now(UTC),
                content_type="application/json",
                body=b'{"n": %d}' % n,
            )
            for n in range(15 * BACKFILL_RATE)
        ]
    )
    sub = (
        await hs.ok("subscriptions", "create", "--target", target.url("/slow"), "--event", event,
                    "--json")
    ).json()  # fmt: skip
    env = {**os.environ, **hs.env}
    waiting = subprocess.Popen(
        [HOOKSTREAM, "backfill", sub["id"], "--since", since.isoformat(), "--wait"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert waiting.stderr is not None
        first = await asyncio.wait_for(asyncio.to_thread(waiting.stderr.readline), 30)
        backfill_id = first.split()[1].rstrip(":")
        await eventually(  # under way
            lambda: hs("backfills", "show", backfill_id, "--json"),
            lambda r: r.json()["published"] > 0,
        )
        cancelled = await hs.ok("backfills", "cancel", backfill_id)
        assert cancelled.out.startswith(f"backfill {backfill_id} cancelled after ")
        out, err = await asyncio.to_thread(waiting.communicate, timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 1
    assert "status:       cancelled" in out
    lines = err.splitlines()
    assert lines[-1] == f"hookstream: error: backfill {backfill_id} was cancelled"
    assert lines[-2].startswith("cancelled: ")
    assert "Traceback" not in err
    state = (await hs.ok("backfills", "show", backfill_id, "--json")).json()
    assert state["status"] == "cancelled"
    assert state["published"] < 15 * BACKFILL_RATE


@pytest.mark.usefixtures("janitor")
async def test_backfill_refusals_are_one_clear_line(hs: Cli) -> None:
    unknown = str(uuid.uuid4())
    assert await hs.fails("backfills", "show", unknown) == (
        "not found: backfill not found (HTTP 404)"
    )
    assert await hs.fails("backfills", "cancel", unknown) == (
        "not found: backfill not found (HTTP 404)"
    )
    assert (await hs.fails("backfills", "show", "nope")).startswith("invalid input: backfill_id:")
    assert await hs.fails("backfill", unknown, "--since", "1h") == (
        "not found: subscription not found (HTTP 404)"
    )
    sub = (
        await hs.ok("subscriptions", "create", "--target", "https://example.com/b", "--json")
    ).json()["id"]
    assert await hs.misused("backfill", sub, "--since", "last tuesday") == (
        "--since: 'last tuesday' is neither a duration (30m, 1h, 2d) nor a date-time with an "
        "offset (2026-01-31T12:00:00Z)"
    )
    assert await hs.misused("backfill", sub, "--since", "2026-01-01T00:00:00") == (
        "--since: '2026-01-01T00:00:00' is neither a duration (30m, 1h, 2d) nor a date-time "
        "with an offset (2026-01-31T12:00:00Z)"
    )
    assert await hs.misused("backfill", sub, "--since", "1h", "--until", "2h") == (
        "--since must be earlier than --until"
    )
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    refused = await hs.fails("backfill", sub, "--since", "1h", "--until", future)
    assert refused.startswith("invalid input: until: must not be in the future"), refused
    missing = await hs("backfill", sub)
    assert missing.code == 2
    assert "the following arguments are required: --since" in missing.err
    await hs.ok("subscriptions", "update", sub, "--inactive")
    assert await hs.fails("backfill", sub, "--since", "1h") == (
        "conflict: this subscription is inactive: activate it to backfill it (HTTP 409)"
    )


# --- failures of the command line itself ----------------------------------------------


async def test_a_refused_or_missing_key_is_one_clear_line(hs: Cli) -> None:
    wrong = {"HOOKSTREAM_URL": hs.server.url, "HOOKSTREAM_API_KEY": "not-the-key"}
    assert await hs.fails("applications", "list", env=wrong) == (
        "the API key was refused (HTTP 401: missing or invalid API key)"
    )
    assert await hs.fails("subscriptions", "list", "--api-key", "also-wrong", env={
        "HOOKSTREAM_URL": hs.server.url
    }) == "the API key was refused (HTTP 401: missing or invalid API key)"  # fmt: skip
    nokey = await hs.fails("deliveries", "list", env={"HOOKSTREAM_URL": hs.server.url})
    assert nokey.startswith("no API key: set HOOKSTREAM_API_KEY or pass --api-key")
    # The flag wins over the environment.
    assert (await hs("subscriptions", "list", "--api-key", hs.server.api_key, env=wrong)).code == 0


def test_a_server_that_is_down_is_named_without_a_traceback() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    env = {**os.environ, "HOOKSTREAM_URL": url, "HOOKSTREAM_API_KEY": "k"}
    for argv in (["subscriptions", "list"], ["deliveries", "tail"], ["retry", str(uuid.uuid4())]):
        done = subprocess.run(
            [HOOKSTREAM, *argv], capture_output=True, text=True, env=env, timeout=30
        )
        assert done.returncode == 1, done
        assert done.stdout == ""
        assert done.stderr == (
            f"hookstream: error: cannot reach {url}: connection refused "
            "(is Hookstream running there? set HOOKSTREAM_URL or --url)\n"
        )
