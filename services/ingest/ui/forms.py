"""Reading the fields of the subscription and application forms, shared by the dashboard
and the portal: what a person types, turned into what the schemas take, and the schemas'
complaints turned back into one message per field."""

from __future__ import annotations

import json
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
    ("filter", "dict_type"): "must be a JSON object",
}
_RATE = "a whole number of deliveries per second, or empty for no limit"
# The endpoint controls a form edits, as text fields (``ordered``: a checkbox, "on" or "").
CONTROLS = ("filter", "headers", "rate_limit", "ordered")


def control_values(sub: Any | None) -> dict[str, str]:
    """A subscription's filter, headers and rate limit as the form shows them: the filter
    as indented JSON, the headers one ``Name: value`` per line, the rate as a number."""
    if sub is None:
        return dict.fromkeys(CONTROLS, "")
    return {
        "filter": json.dumps(sub.filter, indent=2, ensure_ascii=False) if sub.filter else "",
        "headers": "\n".join(f"{k}: {v}" for k, v in (sub.headers or {}).items()),
        "rate_limit": "" if sub.rate_limit is None else str(sub.rate_limit),
        "ordered": "on" if sub.ordered else "",
    }


def read_controls(form: Any) -> dict[str, Any]:
    """The control fields of a submitted form as the schemas take them (an empty field is
    null: no filter, no headers, no limit; an unticked box is false). Text that is not
    JSON, or a header line without a colon, is an ``Unprocessable`` naming the field."""
    text = {k: str(form.get(k, "")).strip() for k in CONTROLS}
    controls: dict[str, Any] = {
        "filter": None,
        "headers": None,
        "rate_limit": None,
        "ordered": text["ordered"] in ("on", "true", "1"),
    }
    if text["filter"]:
        try:
            controls["filter"] = json.loads(text["filter"])
        except ValueError as exc:
            raise Unprocessable(["filter"], f"not valid JSON: {exc}") from None
    if text["headers"]:
        headers: dict[str, str] = {}
        for n, line in enumerate(text["headers"].splitlines(), 1):
            if not line.strip():
                continue
            name, colon, value = line.partition(":")
            if not colon:
                raise Unprocessable(["headers"], f"line {n}: write it as 'Name: value'")
            headers[name.strip()] = value.strip()
        controls["headers"] = headers or None
    if text["rate_limit"]:
        try:
            controls["rate_limit"] = int(text["rate_limit"])
        except ValueError:
            raise Unprocessable(["rate_limit"], _RATE) from None
    return controls


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
