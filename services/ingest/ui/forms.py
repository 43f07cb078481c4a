"""Reading the fields of the subscription and application forms, shared by the dashboard
and the portal: what a person types, turned into what the schemas take, and the schemas'
complaints turned back into one message per field."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from services.ingest.errors import Unprocessable

_SEPARATORS = re.compile(r"[\s,]+")
# The schema's regular expressions, said the way a person would.
_PLAIN = {
    ("target_url", "string_pattern_mismatch"): "must be an absolute http or https URL",
    ("event_types", "string_pattern_mismatch"): "event types are printable ASCII, no spaces",
    ("uid", "string_pattern_mismatch"): "letters, digits, '.', '_' and '-' only",
    ("metadata", "dict_type"): "must be a JSON object",
}


def event_types(text: str) -> list[str]:
    """``"order.paid, invoice.created"`` or one per line → a list; empty = every type."""
    return [t for t in _SEPARATORS.split(text) if t]


def field_errors(exc: ValidationError | Unprocessable) -> dict[str, str]:
    """Messages by form field (the first one each), from pydantic or from the service."""
    issues: list[Any] = list(exc.errors() if isinstance(exc, ValidationError) else exc.detail)
    errors: dict[str, str] = {}
    for issue in issues:
        loc = [part for part in issue.get("loc", ()) if part != "body"]
        field = str(loc[0]) if loc else "form"
        message = _PLAIN.get((field, issue.get("type", "")), issue.get("msg", "is not valid"))
        errors.setdefault(field, str(message))
    return errors
