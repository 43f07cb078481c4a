"""The dashboard's cookies: a server-side session bound to the API key, and the login
form's CSRF token.

After login the browser holds ``hookstream_ui`` = ``<token>.<tag>``. ``token`` is the
random session token of a ``web_sessions`` row (kind ``ui``, ``websessions.py``): logging
out ends the row, so a copy of the cookie stops working at once, in every ingest process.
``tag`` is HMAC-SHA256 of the token under a key derived from ``HOOKSTREAM_API_KEY``:
rotating the key logs every browser out, and the row stores nothing derived from the key
(a copy of the table is no oracle for guessing it).

Before login there is no session row (an anonymous visitor must not be able to fill the
table): the login form's CSRF token is a double-submit cookie, ``hookstream_ui_login``,
random, HttpOnly, SameSite=Strict and sent to ``/ui/login`` only; the form's hidden field
must equal it. A login form post can only trade a correct API key for a session, so a
forger would need the key, and then needs no forgery; the token keeps cross-site posts
from counting as failed logins (the per-address limit) all the same.

Every comparison is constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import timedelta

COOKIE = "hookstream_ui"
LOGIN_COOKIE = "hookstream_ui_login"
# A working day: long enough not to nag an operator, short enough that a forgotten
# browser does not stay logged in for good.
LIFETIME = timedelta(hours=12)
# Long enough to type a key after opening the form in the morning.
LOGIN_CSRF_LIFETIME = timedelta(hours=1)
_CONTEXT = b"hookstream ui session v2"
# secrets.token_urlsafe(32) is 43 characters; anything much longer is not ours.
_MAX_TOKEN = 100


def tag_key(api_key: bytes) -> bytes:
    """Derived, so the cookie's tag never doubles as anything the API accepts."""
    return hmac.new(api_key, _CONTEXT, hashlib.sha256).digest()


def cookie_value(token: str, api_key: bytes) -> str:
    return f"{token}.{_tag(token, tag_key(api_key))}"


def token_of(value: str | None, api_key: bytes | None) -> str | None:
    """The session token in a cookie value, when its tag is right for the current key.

    With no API key configured nobody can log in, so no cookie names a session.
    """
    if api_key is None or not value or len(value) > 2 * _MAX_TOKEN or value.count(".") != 1:
        return None
    token, tag = value.split(".")
    if not token or not hmac.compare_digest(tag.encode(), _tag(token, tag_key(api_key)).encode()):
        return None
    return token


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def login_csrf_of(value: str | None) -> str | None:
    """The login form's token from its cookie, if it looks like one we issued."""
    if not value or len(value) > _MAX_TOKEN:
        return None
    return value


def csrf_matches(expected: str | None, presented: str | None) -> bool:
    if not expected or not presented:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def _tag(token: str, key: bytes) -> str:
    mac = hmac.new(key, token.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
