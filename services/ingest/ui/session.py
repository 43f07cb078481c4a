"""The dashboard's session: a signed cookie that remembers a login and carries a CSRF token.

The API key is typed once on the login form; the browser then holds only this cookie,
``<payload>.<mac>`` with payload = base64url JSON ``{"a": authenticated, "c": csrf, "t":
issued_at}`` and mac = HMAC-SHA256 under a key derived from the API key. Rotating the API
key therefore logs every browser out. Every comparison is constant time.

A visitor who has not logged in gets an anonymous session too, so the login form has a
CSRF token like every other form. Logging in issues a fresh token (no session fixation).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

COOKIE = "hookstream_ui"
# A working day: long enough not to nag an operator, short enough that a forgotten
# browser does not stay logged in for good.
MAX_AGE_SECONDS = 12 * 3600
_CONTEXT = b"hookstream ui session v1"


@dataclass(frozen=True, slots=True)
class UiSession:
    authenticated: bool
    csrf: str
    issued_at: int


def signing_key(api_key: bytes | None) -> bytes:
    """Derived, so the cookie's MAC never doubles as anything the API accepts.

    With no API key configured nobody can log in (``decode`` never returns an
    authenticated session), but anonymous sessions still need a key to sign with.
    """
    return hmac.new(api_key or b"", _CONTEXT, hashlib.sha256).digest()


def new_session(*, authenticated: bool, now: float) -> UiSession:
    return UiSession(authenticated, secrets.token_urlsafe(32), int(now))


def encode(session: UiSession, key: bytes) -> str:
    data = {"a": session.authenticated, "c": session.csrf, "t": session.issued_at}
    payload = _b64(json.dumps(data, separators=(",", ":")).encode())
    return f"{payload}.{_mac(key, payload)}"


def decode(value: str | None, key: bytes, *, now: float, api_key_set: bool) -> UiSession | None:
    """The session in a cookie value, or None when it is missing, forged, stale or malformed."""
    if not value or value.count(".") != 1:
        return None
    payload, mac = value.split(".")
    if not hmac.compare_digest(mac.encode(), _mac(key, payload).encode()):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        session = UiSession(bool(data["a"]), str(data["c"]), int(data["t"]))
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    if not 0 <= now - session.issued_at <= MAX_AGE_SECONDS:
        return None
    if session.authenticated and not api_key_set:
        return None
    return session


def csrf_matches(session: UiSession, presented: str | None) -> bool:
    if not presented:
        return False
    return hmac.compare_digest(presented.encode(), session.csrf.encode())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _mac(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
