"""Pure parts of ingest: body checks, URL rules, API key handling, error shapes, signing tool."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from pydantic import SecretStr, ValidationError

from services.ingest.app import create_app
from services.ingest.auth import (
    ConfigurationError,
    check_api_key_configured,
    configured_key,
    key_matches,
)
from services.ingest.errors import (
    InvalidJSON,
    PayloadTooLarge,
    ServiceUnavailable,
    Unprocessable,
    _validation_detail,
)
from services.ingest.idempotency import fingerprint
from services.ingest.ingestion import _signed
from services.ingest.redelivery import parse_since
from services.ingest.request_body import parse_json
from services.ingest.schemas import SignatureRequest, SubscriptionCreate
from services.ingest.subscriptions import check_target_url
from services.ingest.tools import sign_payload
from shared.settings import Settings


def settings(**overrides: Any) -> Settings:
    return Settings(**overrides)


# --- JSON bodies --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a": 1}', {"a": 1}),
        (b"[1, 2]", [1, 2]),
        (b"null", None),
        (b'"text"', "text"),
        # Lone surrogates: valid JSON that orjson refuses. Beyond 64 bits: orjson makes a float.
        (b"[18446744073709551616]", [18446744073709551616.0]),
        (b'{"s": "\\ud800"}', {"s": "\ud800"}),
    ],
)
def test_parse_json_accepts_every_json_document(body: bytes, expected: Any) -> None:
    assert parse_json(body) == expected


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"not json", b'{"a": NaN}', b"Infinity", b"\xff\xfe{}", b'{"a": 1} trailing'],
)
def test_parse_json_refuses_what_is_not_json(body: bytes) -> None:
    with pytest.raises(InvalidJSON):
        parse_json(body)


def test_deep_nesting_is_a_400_not_a_crash() -> None:
    with pytest.raises(InvalidJSON):
        parse_json(b"[" * 100_000 + b"]" * 100_000)


# --- target URLs --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook",
        "http://127.0.0.1:8080/x?y=1#z",
        "HTTPS://Example.COM",
        "https://user:pass@example.com/",
        "https://[::1]:9000/",
        "https://exämple.com/ü",
    ],
)
def test_target_url_accepted(url: str) -> None:
    assert check_target_url(url, 2048) == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "gopher://x",
        "https://",
        "https:///path",
        "//example.com/",
        "example.com",
        "https://exa mple.com/",
        "https://example.com/\n",
        "https://example.com:99999/",
        "https://example.com:port/",
        "https://[::1/",
        "https://example.com/" + "a" * 2048,
    ],
)
def test_target_url_refused(url: str) -> None:
    with pytest.raises(Unprocessable) as caught:
        check_target_url(url, 2048)
    assert caught.value.status_code == 422
    assert caught.value.detail[0]["loc"] == ["body", "target_url"]


@pytest.mark.parametrize(
    "fields",
    [
        {"target_url": "https://e.com/", "secret_key": "a\x00b"},
        {"target_url": "https://e.com/", "secret_key": "\ud800"},
        {"target_url": "https://e.com/\ud800"},
        {"target_url": "https://e.com/", "event_types": ["has space"]},
        {"target_url": "https://e.com/", "event_types": ["é"]},
        {"target_url": "https://e.com/", "is_active": 0},
        {"target_url": "https://e.com/", "is_active": "true"},
        {"target_url": "https://e.com/", "extra": 1},
    ],
)
def test_subscription_schema_refuses_what_postgres_or_headers_cannot_hold(
    fields: dict[str, Any],
) -> None:
    with pytest.raises(ValidationError):
        SubscriptionCreate.model_validate(fields)


# --- API key ------------------------------------------------------------------------


def test_no_api_key_refuses_to_start_unless_the_dev_flag_is_set() -> None:
    for key in (None, SecretStr("")):
        with pytest.raises(ConfigurationError, match="HOOKSTREAM_API_KEY"):
            create_app(settings(api_key=key))
        check_api_key_configured(settings(api_key=key, allow_no_api_key=True))
    check_api_key_configured(settings(api_key=SecretStr("k")))


def test_key_matching() -> None:
    expected = configured_key(settings(api_key=SecretStr("right")))
    assert key_matches(expected, "right")
    assert not key_matches(expected, "wrong")
    assert not key_matches(expected, "righ")
    assert not key_matches(expected, "")
    assert not key_matches(expected, None)
    assert not key_matches(None, "right")
    assert not key_matches(None, "")


# --- errors -------------------------------------------------------------------------


def test_validation_detail_never_echoes_input() -> None:
    errors = [
        {
            "type": "string_too_long",
            "loc": ("body", "secret_key"),
            "msg": "too long",
            "input": "hunter2",
            "ctx": {"max_length": 3},
        }
    ]
    detail = _validation_detail(errors)
    assert detail == [{"loc": ["body", "secret_key"], "msg": "too long", "type": "string_too_long"}]
    assert "hunter2" not in orjson.dumps(detail).decode()


def test_error_types_carry_status_and_headers() -> None:
    assert PayloadTooLarge(1024).status_code == 413
    unavailable = ServiceUnavailable("later", retry_after=5)
    assert (unavailable.status_code, unavailable.headers) == (503, {"Retry-After": "5"})


# --- idempotency and tools ----------------------------------------------------------


def test_fingerprint_depends_on_body_and_event_type() -> None:
    assert fingerprint("a", b"{}") == fingerprint("a", b"{}")
    assert fingerprint("a", b"{}") != fingerprint("b", b"{}")
    assert fingerprint("a", b"{}") != fingerprint("a", b"{ }")
    assert fingerprint("a\x00", b"b") != fingerprint("a", b"\x00b")


def test_signature_generator_matches_the_original_service() -> None:
    payload = {"z": [1, 2.0, None, True], "a": "ü"}
    out = sign_payload(SignatureRequest(payload=payload, secret_key="s"))
    assert out.signed_body == json.dumps(payload)
    digest = hmac.new(b"s", json.dumps(payload).encode(), hashlib.sha256).hexdigest()
    assert out.x_hub_signature_256 == f"sha256={digest}"


# --- signatures ---------------------------------------------------------------------


def _hub(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    "body",
    [
        b'{"b":1,"a":[1,2]}',
        b'{"id":123456789012345678901234567890,"f":1.10}',  # stdlib keeps the big int
        b'{"s":"\\u00e9\\ud800"}',
    ],
)
def test_signature_over_raw_body_or_the_original_json_dumps_form(body: bytes) -> None:
    legacy = json.dumps(json.loads(body)).encode()
    assert legacy != body
    assert _signed("k", body, _hub("k", body))
    assert _signed("k", body, _hub("k", legacy))
    assert not _signed("k", body, _hub("other", legacy))
    assert not _signed("k", body, _hub("k", body + b" "))
    assert not _signed("k", body, None)
    assert not _signed("k", body, "")
    assert not _signed("k", body, "sha256=")


# --- replay's `since` ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-31T12:00:00Z", datetime(2026, 1, 31, 12, tzinfo=UTC)),
        ("2026-01-31t12:00:00z", datetime(2026, 1, 31, 12, tzinfo=UTC)),
        ("2026-01-31T13:00:00.123456789+01:00", datetime(2026, 1, 31, 12, 0, 0, 123456, UTC)),
    ],
)
def test_since_takes_rfc3339(text: str, expected: datetime) -> None:
    assert parse_since(text) == expected


@pytest.mark.parametrize(
    "text", ["0", "-2.2e-311", "2026-01-31", "2026-01-31T12:00:00", "2026-13-01T00:00:00Z", ""]
)
def test_since_refuses_the_rest(text: str) -> None:
    with pytest.raises(Unprocessable):
        parse_since(text)


def test_since_defaults_to_a_day() -> None:
    assert abs(parse_since(None) - (datetime.now(UTC) - timedelta(hours=24))) < timedelta(seconds=5)
