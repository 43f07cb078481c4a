"""Webhook signatures: inbound GitHub-style, outbound Standard Webhooks + compatibility.

All comparisons are constant time (hmac.compare_digest).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

HUB_PREFIX = "sha256="
WHSEC_PREFIX = "whsec_"


def hub_signature(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of body>`` as in ``x-hub-signature-256``."""
    return HUB_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def legacy_body(payload: Any) -> bytes:
    """What the original service signed: ``json.dumps(payload)`` with default separators."""
    return json.dumps(payload).encode()


def verify_hub_signature(secret: str, body: bytes, header: str | None, payload: Any = None) -> bool:
    """True when ``header`` signs the raw body, or (compatibility) ``json.dumps(payload)``."""
    if not header:
        return False
    candidate = header.strip().encode()
    if hmac.compare_digest(candidate, hub_signature(secret, body).encode()):
        return True
    if payload is not None:
        return hmac.compare_digest(candidate, hub_signature(secret, legacy_body(payload)).encode())
    return False


def standard_webhooks_key(secret: str) -> bytes:
    """Standard Webhooks keys are base64 after ``whsec_``; any other secret is used as bytes."""
    if secret.startswith(WHSEC_PREFIX):
        try:
            return base64.b64decode(secret[len(WHSEC_PREFIX) :], validate=True)
        except ValueError:
            pass
    return secret.encode()


def standard_webhooks_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
