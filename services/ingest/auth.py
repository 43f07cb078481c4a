"""API key authentication for management, status, tools and ``POST /events``.

``Authorization: Bearer <HOOKSTREAM_API_KEY>``, compared in constant time. With no key
configured (only possible with ``HOOKSTREAM_ALLOW_NO_API_KEY=true``) every request to a
protected route is refused: no key never means "open".
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.ingest.errors import Unauthorized
from shared.settings import Settings

# auto_error=False: a missing header is our 401 in our error shape, not FastAPI's 403.
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="`Authorization: Bearer <HOOKSTREAM_API_KEY>`",
)


class ConfigurationError(RuntimeError):
    """Settings that must stop the service from starting."""


def configured_key(settings: Settings) -> bytes | None:
    """The API key as bytes; an empty value counts as unset."""
    if settings.api_key is None:
        return None
    value = settings.api_key.get_secret_value()
    return value.encode() if value else None


def check_api_key_configured(settings: Settings) -> None:
    if configured_key(settings) is None and not settings.allow_no_api_key:
        raise ConfigurationError(
            "HOOKSTREAM_API_KEY is not set: refusing to start with unauthenticated management "
            "routes. Set HOOKSTREAM_API_KEY (make run generates one), or set "
            "HOOKSTREAM_ALLOW_NO_API_KEY=true for local development (protected routes then "
            "refuse every request)."
        )


def key_matches(expected: bytes | None, presented: str | None) -> bool:
    if expected is None or not presented:
        return False
    return hmac.compare_digest(presented.encode(), expected)


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected: bytes | None = request.app.state.api_key
    if credentials is None or not key_matches(expected, credentials.credentials):
        raise Unauthorized()
