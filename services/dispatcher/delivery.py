"""The delivery core, free of I/O: the request a target receives and what an answer means.

- ``request_headers``: design §5 (Standard Webhooks + the original service's headers).
- ``Outcome``: one attempt's result, from a response (``outcome_of_response``) or an
  exception (``outcome_of_error``), or a decision not to attempt (``Outcome.skipped``).
- ``decide``: what follows an outcome: the attempt row's status, a retry on a tier topic,
  a dead letter, deactivating the subscription.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.dispatcher.http1 import SendError
from shared import __version__
from shared.models import AttemptStatus
from shared.records import DeliveryJob
from shared.retry_policy import RETRY_AFTER_STATUSES, RetryDecision, next_retry, parse_retry_after
from shared.signing import hub_signature, standard_webhooks_signature
from shared.topics import Topics
from shared.urlsafety import UnsafeTargetError
from shared.webhook_headers import is_reserved

USER_AGENT = f"Hookstream/{__version__}"


def request_headers(
    job: DeliveryJob,
    *,
    timestamp: int,
    secret: str | None,
    signing_key: bytes | None,
    custom: tuple[tuple[str, str], ...] = (),
    previous_key: bytes | None = None,
) -> dict[str, str]:
    """Headers for one attempt. Signatures only when the subscription has a secret.

    ``previous_key`` (during a secret rotation's overlap) adds a second signature to
    ``webhook-signature``, as Standard Webhooks allows (``v1,<new> v1,<old>``), so a
    receiver still holding the old secret keeps verifying.

    ``custom`` (the subscription's own headers) go first, and Hookstream's replace any
    of the same name (the API refuses such names; this holds even for a row written
    by hand).

    ``signing_key`` is ``standard_webhooks_key(secret)``, computed once per secret by the
    caller. ``webhook-id`` is the delivery id, stable across retries, so receivers can
    deduplicate; ``webhook-timestamp`` is this attempt's send time.
    """
    delivery_id = str(job.delivery_id)
    ours = {
        "content-type": job.content_type,
        "user-agent": USER_AGENT,
        "webhook-id": delivery_id,
        "webhook-timestamp": str(timestamp),
        "x-webhook-id": delivery_id,
        "x-webhook-event": job.event_type,
    }
    if job.sequence is not None:
        ours["webhook-sequence"] = str(job.sequence)
    headers = {name: value for name, value in custom if not is_reserved(name)}
    headers.update(ours)
    if secret is not None and signing_key is not None:
        signature = standard_webhooks_signature(signing_key, delivery_id, timestamp, job.body)
        if previous_key is not None:
            old = standard_webhooks_signature(previous_key, delivery_id, timestamp, job.body)
            signature = f"{signature} {old}"
        headers["webhook-signature"] = signature
        headers["x-hub-signature-256"] = hub_signature(secret, job.body)
    return headers


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    status_code: int | None = None
    error: str | None = None
    # Worth another attempt later (a timeout, a 500); false for refused targets and 410.
    retryable: bool = False
    # False when no request was sent (subscription gone or inactive): no dead letter.
    attempted: bool = True
    gone: bool = False
    retry_after: str | None = None
    excerpt: str | None = None
    # The total timeout ran out (the target, or a stall of this process: see stalls.py).
    timed_out: bool = False

    @classmethod
    def skipped(cls, reason: str) -> Outcome:
        return cls(ok=False, error=reason, attempted=False)

    @classmethod
    def refused(cls, reason: str) -> Outcome:
        return cls(ok=False, error=reason)


def outcome_of_response(status: int, retry_after: str | None, excerpt: str | None) -> Outcome:
    if 200 <= status < 300:
        return Outcome(ok=True, status_code=status, excerpt=excerpt)
    if status == 410:
        return Outcome(
            ok=False,
            status_code=status,
            error="HTTP 410 Gone: the target asked to stop; subscription deactivated",
            gone=True,
            excerpt=excerpt,
        )
    error = f"HTTP {status}"
    if 300 <= status < 400:
        error += " (redirects are not followed)"
    return Outcome(
        ok=False,
        status_code=status,
        error=error,
        retryable=True,
        retry_after=retry_after if status in RETRY_AFTER_STATUSES else None,
        excerpt=excerpt,
    )


def outcome_of_error(exc: BaseException, *, timeout: float) -> Outcome:
    """Classify an exception raised while sending. Unknown exceptions end the delivery."""
    if isinstance(exc, UnsafeTargetError):
        return Outcome.refused(f"blocked target (SSRF guard): {exc}")
    if isinstance(exc, TimeoutError):
        return Outcome(
            ok=False, error=f"timeout after {timeout:g}s", retryable=True, timed_out=True
        )
    if isinstance(exc, SendError):  # its text is written for the attempt row
        return Outcome(ok=False, error=str(exc), retryable=exc.retryable)
    if isinstance(exc, OSError):
        return Outcome(ok=False, error=f"{type(exc).__name__}: {exc}", retryable=True)
    return Outcome(ok=False, error=f"internal error: {type(exc).__name__}: {exc}")


@dataclass(frozen=True, slots=True)
class Decision:
    status: AttemptStatus
    error: str | None
    retry: RetryDecision | None = None
    dead_letter: bool = False
    deactivate: bool = False


def decide(
    outcome: Outcome,
    job: DeliveryJob,
    *,
    topics: Topics,
    schedule: tuple[timedelta, ...],
    jitter: float,
    now: datetime,
    rng: random.Random | None = None,
) -> Decision:
    """What follows one attempt of ``job`` (attempt numbers start at 1)."""
    if outcome.ok:
        return Decision(AttemptStatus.SUCCESS, None)
    if not outcome.attempted:
        return Decision(AttemptStatus.FAILURE, outcome.error)
    if outcome.gone:
        return Decision(AttemptStatus.FAILURE, outcome.error, dead_letter=True, deactivate=True)
    if not outcome.retryable:
        return Decision(AttemptStatus.FAILURE, outcome.error, dead_letter=True)
    retry_after = parse_retry_after(outcome.retry_after, now)
    retry = next_retry(
        attempt=job.attempt,
        schedule=schedule,
        topics=topics,
        now=now,
        jitter=jitter,
        retry_after=retry_after,
        rng=rng,
    )
    if retry is None:
        error = f"{outcome.error}; gave up after attempt {job.attempt}"
        return Decision(AttemptStatus.FAILURE, error, dead_letter=True)
    return Decision(AttemptStatus.FAILED_ATTEMPT, outcome.error, retry=retry)
