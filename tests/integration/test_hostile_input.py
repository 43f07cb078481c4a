"""Hostile requests against a real ingest process (``python -m services.ingest``): a 5xx from
bad input is a bug (design §4), a crash or a hang worse.

What tests/integration/test_ingest.py and test_api.py already cover (oversized bodies on
``/ingest`` and ``POST /subscriptions/``, malformed JSON, bad ids) is not repeated; this
module adds deep nesting and invalid UTF-8 on every JSON route, oversized request heads,
odd Content-Length values, huge ``event_types`` lists, and oversized bodies on the routes
not covered yet. Raw sockets are used where an HTTP client would refuse to send the
request. Every subscription points at a loopback discard address, so nothing published
here could ever be delivered off this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from shared.settings import Settings
from shared.signing import hub_signature
from shared.topics import Topics
from tests.support.broker import IngestServer, TopicProbe, running_ingest
from tests.support.rawhttp import raw_exchange, status_of
from tests.support.stack import IsolatedStack

SECRET = "hostile-" + uuid.uuid4().hex
NOWHERE = "http://127.0.0.1:9/hostile"  # the discard port on loopback


@pytest.fixture(scope="module")
def ingest(
    stack: IsolatedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IngestServer]:
    with running_ingest(stack, tmp_path_factory.mktemp("hostile")) as server:
        yield server
    assert "Traceback" not in server.log(), server.log()[-3000:]


@pytest.fixture
async def client(ingest: IngestServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ingest.url, timeout=30, headers=ingest.auth) as c:
        yield c


@pytest.fixture
async def events(settings: Settings) -> AsyncIterator[TopicProbe]:
    async with TopicProbe(settings.kafka_bootstrap, Topics.from_settings(settings).events) as probe:
        yield probe


@pytest.fixture
async def sub_id(client: httpx.AsyncClient) -> str:
    r = await client.post("/subscriptions/", json={"target_url": NOWHERE, "secret_key": SECRET})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def healthy(client: httpx.AsyncClient) -> None:
    r = await client.get("/health")
    assert r.status_code == 200


# --- JSON that parsers choke on -----------------------------------------------------

DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000  # 200 KB: under the 256 KiB body limit
DEEP_OBJECT = b'{"a":' * 25_000 + b"1" + b"}" * 25_000

INVALID_UTF8 = [
    b'{"a": "\xff"}',
    b'{"a": "\xc0\xaf"}',  # overlong encoding of "/"
    b'{"a": "\xed\xa0\x80"}',  # a UTF-16 surrogate encoded as if it were a character
    b'{"a": "\xe2\x82"}',  # truncated sequence
    b"\xef\xbb\xbf{}",  # byte order mark
    '{"a": 1}'.encode("utf-16"),
]


def json_routes(sub_id: str) -> list[tuple[str, str, dict[str, str]]]:
    """Every route that takes a JSON body: (method, path, extra headers)."""
    return [
        ("POST", f"/ingest/{sub_id}", {}),
        ("POST", "/events", {"x-webhook-event": "hostile.test"}),
        ("POST", "/subscriptions/", {}),
        ("PATCH", f"/subscriptions/{sub_id}", {}),
        ("POST", "/tools/signature-generator", {}),
    ]


async def send_json(
    client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str], body: bytes
) -> httpx.Response:
    sent = {"content-type": "application/json", "x-hub-signature-256": hub_signature(SECRET, body)}
    return await client.request(method, path, content=body, headers=sent | headers)


@pytest.mark.parametrize("body", [DEEP_ARRAY, DEEP_OBJECT], ids=["array", "object"])
async def test_deep_nesting_is_refused_on_every_json_route(
    client: httpx.AsyncClient, events: TopicProbe, sub_id: str, body: bytes
) -> None:
    for method, path, headers in json_routes(sub_id):
        started = time.monotonic()
        r = await send_json(client, method, path, headers, body)
        assert r.status_code == 400, (path, r.status_code, r.text[:300])
        assert isinstance(r.json()["detail"], str)
        assert time.monotonic() - started < 5, path
    assert await events.new_count() == 0
    await healthy(client)


async def test_nesting_at_the_parsers_limits_is_accepted_or_refused_never_a_crash(
    client: httpx.AsyncClient, events: TopicProbe, sub_id: str
) -> None:
    # orjson takes 1,024 levels, the stdlib (the legacy signature form, FastAPI's routes)
    # about as many as the recursion limit: both sides of both edges.
    accepted = 0
    for depth in (990, 1000, 1023, 1024, 1025, 2000):
        body = b"[" * depth + b"]" * depth
        for method, path, headers in json_routes(sub_id):
            r = await send_json(client, method, path, headers, body)
            assert r.status_code < 500, (path, depth, r.status_code, r.text[:300])
            accepted += r.status_code == 202
    assert await events.new_count() == accepted
    await healthy(client)


@pytest.mark.parametrize("body", INVALID_UTF8)
async def test_invalid_utf8_bodies_are_refused(
    client: httpx.AsyncClient, events: TopicProbe, sub_id: str, body: bytes
) -> None:
    for method, path, headers in json_routes(sub_id):
        r = await send_json(client, method, path, headers, body)
        if path.startswith(("/ingest/", "/events")):
            # Stored and delivered byte for byte, so it must be UTF-8 JSON as it stands.
            assert r.status_code == 400, (path, r.status_code, r.text[:300])
        else:
            # FastAPI decodes with the stdlib, which also takes a BOM, UTF-16 and
            # surrogates (PATCH with a BOM and {} is a valid no-op); what cannot be stored
            # is refused: test_text_postgresql_cannot_store_is_422_not_a_500.
            assert r.status_code < 500, (path, r.status_code, r.text[:300])
    assert await events.new_count() == 0


@pytest.mark.parametrize("field", ["target_url", "secret_key"])
@pytest.mark.parametrize("raw", [b"\xed\xa0\x80", b"\\ud800", b"\\u0000"])
async def test_text_postgresql_cannot_store_is_422_not_a_500(
    client: httpx.AsyncClient, sub_id: str, field: str, raw: bytes
) -> None:
    fields = {"target_url": b"https://e.com/x", "secret_key": b"k"}
    fields[field] += raw
    body = b"{" + b", ".join(b'"%s": "%s"' % (k.encode(), v) for k, v in fields.items()) + b"}"
    for method, path in (("POST", "/subscriptions/"), ("PATCH", f"/subscriptions/{sub_id}")):
        r = await client.request(
            method, path, content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == 422, (path, body, r.text[:300])


# --- request heads --------------------------------------------------------------------


def _head(path: str, fields: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    lines = b"".join(name + b": " + value + b"\r\n" for name, value in fields)
    return (
        b"POST "
        + path.encode()
        + b" HTTP/1.1\r\nHost: hookstream\r\n"
        + lines
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        + b"Connection: close\r\n\r\n"
        + body
    )


@pytest.mark.parametrize(
    "fields",
    [
        [(b"x-padding", b"a" * 65_536)],
        [(b"x-padding", b"a" * (8 << 20))],
        [(b"x-h%d" % i, b"v" * 32) for i in range(2000)],
        [(b"x-hub-signature-256", b"sha256=" + b"0" * 100_000)],
        [(b"Idempotency-Key", b"k" * 100_000)],
        [(b"x-webhook-event", b"e" * 100_000)],
    ],
    ids=["64KiB-field", "8MiB-field", "2000-fields", "signature", "idempotency-key", "event"],
)
async def test_oversized_request_heads_are_431_on_every_route(
    ingest: IngestServer, client: httpx.AsyncClient, events: TopicProbe, sub_id: str, fields: Any
) -> None:
    body = b'{"n": 1}'
    signed = [(b"x-hub-signature-256", hub_signature(SECRET, body).encode())]
    auth = [(b"Authorization", f"Bearer {ingest.api_key}".encode())]
    for path, head in (
        (f"/ingest/{sub_id}", signed + fields),
        ("/events", [*auth, (b"x-webhook-event", b"a"), *fields]),
        ("/subscriptions/", auth + fields),
        ("/tools/signature-generator", auth + fields),
    ):
        answer = raw_exchange(ingest.port, _head(path, head, body))
        assert status_of(answer) == 431, (path, answer[:300])
    assert await events.new_count() == 0
    await healthy(client)


async def test_an_endless_request_head_is_cut_off_while_it_is_sent(
    ingest: IngestServer, client: httpx.AsyncClient
) -> None:
    # 32 MiB of one header line, never finished: 2,048 times HOOKSTREAM_MAX_HEADER_BYTES.
    # A server with a parser-level limit answers 431 or hangs up long before the end.
    chunk = b"a" * 65_536
    cut_off = False
    with socket.create_connection(("127.0.0.1", ingest.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: hookstream\r\nX-Padding: ")
        try:
            for _ in range(512):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            cut_off = True
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError, ConnectionResetError):
            cut_off = cut_off or sock.recv(64).startswith(b"HTTP/1.1 431")
    await healthy(client)
    assert cut_off, "ingest read 32 MiB of a single header line without answering"


@pytest.mark.parametrize(
    "value", [b"99999999999999999999999", b"-1", b"1e3", b"0x7", b"7, 7", b"7 7"]
)
async def test_odd_content_lengths_are_refused_without_a_5xx(
    ingest: IngestServer, events: TopicProbe, sub_id: str, value: bytes
) -> None:
    body = b'{"a":1}'
    for path, auth in ((f"/ingest/{sub_id}", b"x: y"), ("/events", b"Authorization: Bearer ")):
        if path == "/events":
            auth += ingest.api_key.encode()
        request = (
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: hookstream\r\n" + auth + b"\r\n"
            b"x-webhook-event: a\r\nx-hub-signature-256: "
            + hub_signature(SECRET, body).encode()
            + b"\r\nContent-Length: "
            + value
            + b"\r\nConnection: close\r\n\r\n"
            + body
        )
        answer = raw_exchange(ingest.port, request)
        assert status_of(answer) in (400, 413), (path, value, answer[:300])
    assert await events.new_count() == 0


# --- subscriptions ------------------------------------------------------------------


async def test_huge_event_types_lists_are_422_quickly_and_never_echoed(
    client: httpx.AsyncClient, sub_id: str
) -> None:
    for event_types in (
        [f"t.{i}" for i in range(101)],  # one over the documented limit (100)
        [f"t.{i}" for i in range(18_000)],  # ~180 KB of JSON, under the body limit
        ["same.type"] * 18_000,
        ["has space"] * 18_000,  # invalid items too: one error, not eighteen thousand
    ):
        for method, path in (("POST", "/subscriptions/"), ("PATCH", f"/subscriptions/{sub_id}")):
            started = time.monotonic()
            r = await client.request(
                method, path, json={"target_url": NOWHERE, "event_types": event_types}
            )
            assert r.status_code == 422, (path, r.text[:300])
            assert len(r.content) < 2048, "the refusal must not echo the list"
            assert time.monotonic() - started < 2
    # The documented maximum itself is fine: 100 types of 200 characters.
    types = [f"t{i:03d}." + "x" * 195 for i in range(100)]
    r = await client.post("/subscriptions/", json={"target_url": NOWHERE, "event_types": types})
    assert r.status_code == 201, r.text[:300]
    assert r.json()["event_types"] == types
    r = await client.post(
        "/subscriptions/", json={"target_url": NOWHERE, "event_types": ["e" * 201]}
    )
    assert r.status_code == 422


async def test_oversized_bodies_on_the_other_routes_are_413(
    client: httpx.AsyncClient, events: TopicProbe, settings: Settings, sub_id: str
) -> None:
    big = b'{"pad": "' + b"x" * settings.max_body_bytes + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 16384):
            yield big[i : i + 16384]

    for method, path, headers in json_routes(sub_id)[1:]:  # /ingest: test_ingest.py
        if path == "/subscriptions/":
            continue  # test_api.py
        for content in (big, chunks()):
            r = await client.request(
                method,
                path,
                content=content,
                headers={"content-type": "application/json"} | headers,
            )
            assert r.status_code == 413, (path, r.text[:300])
    assert await events.new_count() == 0
    await healthy(client)


# --- bursts ---------------------------------------------------------------------------


async def test_a_burst_of_retries_with_one_idempotency_key_publishes_once(
    ingest: IngestServer, events: TopicProbe, sub_id: str
) -> None:
    # A client whose retries pile up (a proxy replaying on timeout, a queue draining) sends
    # the same request hundreds of times at once.
    body = b'{"burst": "one key"}'
    headers = {
        "x-hub-signature-256": hub_signature(SECRET, body),
        "Idempotency-Key": f"burst-{uuid.uuid4()}",
        "content-type": "application/json",
    }
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(base_url=ingest.url, timeout=30, limits=limits) as burst:
        answers = await asyncio.gather(
            *(burst.post(f"/ingest/{sub_id}", content=body, headers=headers) for _ in range(400))
        )
    codes = {r.status_code for r in answers}
    assert codes <= {202, 409}, codes
    delivery_ids = {r.json()["delivery_id"] for r in answers if r.status_code == 202}
    published = await events.new_count()
    assert (len(delivery_ids), published) == (1, 1)
