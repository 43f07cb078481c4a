"""The operator key (``HOOKSTREAM_API_KEY``): configuration and the constant-time check.

Who a request acts for (operator or an application's scoped key) is decided in
``tenancy.py``. With no key configured (only possible with
``HOOKSTREAM_ALLOW_NO_API_KEY=true``) the operator key matches nothing: no key never
means "open".
"""

from __future__ import annotations

import hmac

from shared.settings import Settings


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
