"""Turning command-line text into values: bodies, JSON objects, headers, durations, times.

Each refuses bad input with a ``UsageError`` that names the flag.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from hookstream_cli.context import UsageError
from shared.settings import parse_duration


def read_body(value: str, stdin: BinaryIO, flag: str) -> bytes:
    """``@-`` is stdin, ``@FILE`` a file's bytes, anything else the text itself."""
    if value == "@-":
        if stdin.isatty():
            raise UsageError(f"{flag} @- reads stdin: pipe the body in (< body.json)")
        return stdin.read()
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            return path.read_bytes()
        except OSError as exc:
            raise UsageError(f"{flag}: cannot read {path}: {exc.strerror}") from None
    return value.encode()


def read_json_body(value: str, stdin: BinaryIO, flag: str) -> bytes:
    """The body's exact bytes (they are what gets signed), checked to be JSON first."""
    body = read_body(value, stdin, flag)
    try:
        json.loads(body)
    except ValueError as exc:
        raise UsageError(f"{flag} is not valid JSON: {exc}") from None
    return body


def json_object(value: str, stdin: BinaryIO, flag: str) -> dict[str, Any]:
    """A JSON object given inline or as @FILE (metadata, filters)."""
    try:
        parsed = json.loads(read_body(value, stdin, flag))
    except ValueError as exc:
        raise UsageError(f"{flag} is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise UsageError(f"{flag} must be a JSON object ({{...}})")
    return parsed


def parse_header(text: str) -> tuple[str, str]:
    """``'Name: value'`` as curl takes it."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip() or name != name.strip():
        raise UsageError(f"header {text!r} is not 'Name: value'")
    return name, value.strip()


def parse_duration_arg(text: str, flag: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError:
        raise UsageError(f"{flag}: not a duration: {text!r} (e.g. 30s, 5m, 1h, 7d)") from None


def parse_since(text: str, flag: str = "--since", now: datetime | None = None) -> datetime:
    """A duration back from now (``1h``), or a date-time with its offset."""
    try:
        return (now or datetime.now(UTC)) - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise UsageError(
            f"{flag}: {text!r} is neither a duration (30m, 1h, 2d) nor a date-time with "
            "an offset (2026-01-31T12:00:00Z)"
        )
    return moment
