"""The request headers a delivery was sent with, as the portal shows them.

Attempt rows do not store headers: they are rebuilt from the row the way the dispatcher
builds them (``services/dispatcher/delivery.py`` ``request_headers``; a unit test holds
the two to the same names, values and order). Signature values are elided: they are
computed from the endpoint's secret, which the portal never shows after creation. The
endpoint's custom headers are shown, as the API shows them to the application's key.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta

from shared import __version__
from shared.models import Subscription
from shared.webhook_headers import is_reserved

USER_AGENT = f"Hookstream/{__version__}"
ELLIPSIS = "…"
# Signature headers: the scheme is kept ("v1,", "sha256="), the value is not.
SIGNATURES = {"webhook-signature": ",", "x-hub-signature-256": "="}


def elide(name: str, value: str) -> str:
    """``value`` with each signature's digest replaced by an ellipsis (during a secret
    rotation ``webhook-signature`` carries two); other headers as they are."""
    separator = SIGNATURES.get(name)
    if separator is None:
        return value
    return " ".join(_elide_one(part, separator) for part in value.split(" "))


def _elide_one(signature: str, separator: str) -> str:
    scheme, found, _ = signature.partition(separator)
    return f"{scheme}{separator}{ELLIPSIS}" if found else ELLIPSIS


def sent_at(recorded_at: datetime, duration_ms: int | None) -> int:
    """``webhook-timestamp`` of an attempt: the row is written once the answer is in, so
    the request left ``duration_ms`` earlier (to the second, as the header says it)."""
    return int((recorded_at - timedelta(milliseconds=duration_ms or 0)).timestamp())


def signatures_at(sub: Subscription | None, when: datetime) -> int:
    """How many Standard Webhooks signatures a request to ``sub`` carried at ``when``:
    none without a secret, two while a rotation's previous secret still signed. Read
    from the endpoint as it is now (a secret changed since is not known)."""
    if sub is None or sub.secret_key is None:
        return 0
    until = sub.previous_secret_expires_at
    rotated = sub.secret_rotated_at
    overlapping = (
        sub.previous_secret_key is not None
        and until is not None
        and when < until
        and (rotated is None or when >= rotated)
    )
    return 2 if overlapping else 1


def sent_headers(
    *,
    delivery_id: uuid.UUID,
    event_type: str,
    content_type: str,
    timestamp: int,
    signatures: int,
    custom: Mapping[str, str] | None = None,
) -> list[tuple[str, str]]:
    """The headers of one attempt, in the dispatcher's order, signatures elided: the
    endpoint's own headers first, then Hookstream's, which replace any of the same name."""
    delivery = str(delivery_id)
    ours = {
        "content-type": content_type,
        "user-agent": USER_AGENT,
        "webhook-id": delivery,
        "webhook-timestamp": str(timestamp),
        "x-webhook-id": delivery,
        "x-webhook-event": event_type,
    }
    headers = {name: value for name, value in (custom or {}).items() if not is_reserved(name)}
    headers.update(ours)
    if signatures:
        headers["webhook-signature"] = " ".join([f"v1,{ELLIPSIS}"] * signatures)
        headers["x-hub-signature-256"] = f"sha256={ELLIPSIS}"
    return list(headers.items())
