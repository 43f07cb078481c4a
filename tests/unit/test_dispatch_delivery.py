"""The delivery core as plain functions: headers, outcome classification, what follows."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.dispatcher import http1
from services.dispatcher.delivery import (
    USER_AGENT,
    Outcome,
    decide,
    outcome_of_error,
    outcome_of_response,
    request_headers,
)
from shared import __version__
from shared.models import AttemptStatus
from shared.records import DeliveryJob
from shared.settings import Settings
from shared.signing import standard_webhooks_key
from shared.topics import Topics
from shared.urlsafety import UnsafeTargetError

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
SETTINGS = Settings(retry_schedule="1s,2s,3s", topic_prefix="t")  # type: ignore[arg-type]
TOPICS = Topics.from_settings(SETTINGS)


def job(attempt: int = 1, body: bytes = b'{"a":  1}') -> DeliveryJob:
    return DeliveryJob(
        delivery_id=uuid.uuid4(),
        event_id=uuid.uuid4(),
        subscription_id=uuid.uuid4(),
        event_type="order.created",
        attempt=attempt,
        first_received_at=NOW,
        content_type="application/json; charset=utf-8",
        body=body,
    )


def test_headers_carry_ids_type_and_both_signatures() -> None:
    j = job()
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    h = request_headers(
        j, timestamp=1_700_000_000, secret=secret, signing_key=standard_webhooks_key(secret)
    )
    assert h["content-type"] == "application/json; charset=utf-8"
    assert h["user-agent"] == USER_AGENT == f"Hookstream/{__version__}"
    assert h["webhook-id"] == h["x-webhook-id"] == str(j.delivery_id)
    assert h["webhook-timestamp"] == "1700000000"
    assert h["x-webhook-event"] == "order.created"
    signed = f"{j.delivery_id}.1700000000.".encode() + j.body
    expected = base64.b64encode(hmac.new(b"k" * 24, signed, hashlib.sha256).digest()).decode()
    assert h["webhook-signature"] == f"v1,{expected}"
    hub = hmac.new(secret.encode(), j.body, hashlib.sha256).hexdigest()
    assert h["x-hub-signature-256"] == f"sha256={hub}"


def test_no_secret_no_signature_headers() -> None:
    h = request_headers(job(), timestamp=1, secret=None, signing_key=None)
    assert "webhook-signature" not in h
    assert "x-hub-signature-256" not in h


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_success(status: int) -> None:
    outcome = outcome_of_response(status, None, "ok")
    assert outcome.ok
    assert outcome.status_code == status
    assert decide(outcome, job(), topics=TOPICS, schedule=SETTINGS.retry_schedule,
                  jitter=0, now=NOW).status is AttemptStatus.SUCCESS  # fmt: skip


@pytest.mark.parametrize("status", [301, 302, 400, 401, 404, 429, 500, 502, 503])
def test_other_statuses_are_retryable_failures(status: int) -> None:
    outcome = outcome_of_response(status, None, None)
    assert not outcome.ok
    assert outcome.retryable
    assert outcome.error is not None
    assert outcome.error.startswith(f"HTTP {status}")


def test_retry_after_is_kept_only_for_429_and_503() -> None:
    assert outcome_of_response(429, "7", None).retry_after == "7"
    assert outcome_of_response(503, "7", None).retry_after == "7"
    assert outcome_of_response(500, "7", None).retry_after is None


def test_gone_is_final_and_deactivates() -> None:
    outcome = outcome_of_response(410, None, None)
    d = decide(outcome, job(), topics=TOPICS, schedule=SETTINGS.retry_schedule, jitter=0, now=NOW)
    assert d.status is AttemptStatus.FAILURE
    assert d.deactivate
    assert d.dead_letter
    assert d.retry is None


def test_failed_attempt_with_attempts_left_goes_to_the_first_tier() -> None:
    outcome = outcome_of_response(500, None, None)
    d = decide(outcome, job(1), topics=TOPICS, schedule=SETTINGS.retry_schedule, jitter=0.2,
               now=NOW, rng=random.Random(1))  # fmt: skip
    assert d.status is AttemptStatus.FAILED_ATTEMPT
    assert d.retry is not None
    assert d.retry.attempt == 2
    assert d.retry.topic == "t.retry.1s"
    assert NOW + timedelta(seconds=1) <= d.retry.due_at <= NOW + timedelta(seconds=1.2)
    assert not d.dead_letter


def test_retry_after_lifts_the_delay_and_the_tier() -> None:
    outcome = outcome_of_response(429, "3", None)
    d = decide(outcome, job(1), topics=TOPICS, schedule=SETTINGS.retry_schedule, jitter=0, now=NOW)
    assert d.retry is not None
    assert d.retry.topic == "t.retry.3s"
    assert d.retry.due_at >= NOW + timedelta(seconds=3)


def test_last_attempt_fails_to_the_dead_letter_topic() -> None:
    outcome = outcome_of_response(500, None, None)
    d = decide(outcome, job(4), topics=TOPICS, schedule=SETTINGS.retry_schedule, jitter=0, now=NOW)
    assert d.status is AttemptStatus.FAILURE
    assert d.dead_letter
    assert d.retry is None
    assert d.error == "HTTP 500; gave up after attempt 4"


def test_skipped_jobs_fail_without_a_dead_letter() -> None:
    outcome = Outcome.skipped("not delivered: subscription is inactive")
    d = decide(outcome, job(), topics=TOPICS, schedule=SETTINGS.retry_schedule, jitter=0, now=NOW)
    assert d.status is AttemptStatus.FAILURE
    assert not d.dead_letter
    assert d.error == "not delivered: subscription is inactive"


def test_blocked_targets_fail_at_once_with_a_dead_letter() -> None:
    outcome = outcome_of_error(UnsafeTargetError("localhost resolves to a loopback"), timeout=10)
    assert outcome.error is not None
    assert outcome.error.startswith("blocked target (SSRF guard): ")
    d = decide(outcome, job(1), topics=TOPICS, schedule=SETTINGS.retry_schedule, jitter=0, now=NOW)
    assert d.status is AttemptStatus.FAILURE
    assert d.dead_letter
    assert d.retry is None


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError(), "timeout after 10s"),
        (http1.Disconnected(), "server disconnected"),
        (http1.ConnectFailed("Connection refused"), "connection failed: Connection refused"),
        (http1.DnsFailed("a.example", "Name or service not known"), "DNS lookup failed"),
        (http1.CertificateFailed("self-signed certificate"), "TLS certificate error"),
        (http1.BadAnswer("bad status line"), "invalid HTTP answer: bad status line"),
        (ConnectionResetError(104, "reset"), "ConnectionResetError"),
    ],
)
def test_transport_errors_are_retryable(exc: BaseException, expected: str) -> None:
    outcome = outcome_of_error(exc, timeout=10)
    assert outcome.retryable
    assert outcome.error is not None
    assert expected in outcome.error


def test_unknown_errors_end_the_delivery_instead_of_looping() -> None:
    outcome = outcome_of_error(ZeroDivisionError("bug"), timeout=10)
    assert not outcome.retryable
    assert outcome.error == "internal error: ZeroDivisionError: bug"


def test_custom_headers_go_out_but_never_replace_hookstreams_own() -> None:
    h = request_headers(
        job(),
        timestamp=1,
        secret="s",
        signing_key=b"s",
        custom=(
            ("Authorization", "Bearer receiver"),
            ("X-Team", "billing"),
            ("Webhook-Signature", "v1,forged"),  # only a row written by hand could hold it
            ("X-Hub-Signature-256", "sha256=forged"),
            ("Content-Type", "text/plain"),
        ),
    )
    assert h["Authorization"] == "Bearer receiver"
    assert h["X-Team"] == "billing"
    assert "Webhook-Signature" not in h
    assert "X-Hub-Signature-256" not in h
    assert "Content-Type" not in h
    assert h["webhook-signature"].startswith("v1,")
    assert not h["webhook-signature"].endswith("forged")
