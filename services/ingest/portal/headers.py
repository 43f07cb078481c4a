"""The request headers a delivery was sent with, as the portal shows them.

Attempt rows do not store headers: they are rebuilt from the row the way the dispatcher
builds them (``services/dispatcher/delivery.py`` ``request_headers``; a unit test holds
the two to the same names and order). Signature values are elided: they are computed
from the endpoint's secret, which the portal never shows after creation.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from shared import __version__

USER_AGENT = f"Hookstream/{__version__}"
ELLIPSIS = "…"
# Signature headers: the scheme is kept ("v1,", "sha256="), the value is not.
SIGNATURES = {"webhook-signature": ",", "x-hub-signature-256": "="}


def elide(name: str, value: str) -> str:
    """``value`` with a signature's digest replaced by an ellipsis; other headers as they are."""
    separator = SIGNATURES.get(name)
    if separator is None:
        return value
    scheme, found, _ = value.partition(separator)
    return f"{scheme}{separator}{ELLIPSIS}" if found else ELLIPSIS


def sent_at(recorded_at: datetime, duration_ms: int | None) -> int:
    """``webhook-timestamp`` of an attempt: the row is written once the answer is in, so
    the request left ``duration_ms`` earlier (to the second, as the header says it)."""
    return int((recorded_at - timedelta(milliseconds=duration_ms or 0)).timestamp())


def sent_headers(
    *,
    delivery_id: uuid.UUID,
    event_type: str,
    content_type: str,
    timestamp: int,
    signed: bool,
) -> list[tuple[str, str]]:
    """The headers of one attempt, in the dispatcher's order, signatures elided."""
    delivery = str(delivery_id)
    headers = [
        ("content-type", content_type),
        ("user-agent", USER_AGENT),
        ("webhook-id", delivery),
        ("webhook-timestamp", str(timestamp)),
        ("x-webhook-id", delivery),
        ("x-webhook-event", event_type),
    ]
    if signed:
        headers += [
            ("webhook-signature", elide("webhook-signature", "v1,")),
            ("x-hub-signature-256", elide("x-hub-signature-256", "sha256=")),
        ]
    return headers
