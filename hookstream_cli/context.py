"""What every command gets: where to write, where to read, and a client made on first use."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

from pydantic import BaseModel

from shared.client import Client

if TYPE_CHECKING:
    from typing import TypeAlias

    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Commands = argparse._SubParsersAction  # not subscriptable at run time


class CliError(Exception):
    """A command cannot do what it was asked: one line on stderr, exit ``code``."""

    code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CliError):
    """The arguments are wrong (exit 2, as argparse's own refusals)."""

    code = 2


class Output:
    """Human text by default; with ``--json``, JSON documents (one per line when a command
    streams, like ``deliveries tail``)."""

    def __init__(self, out: TextIO, err: TextIO, *, json_mode: bool) -> None:
        self.stdout = out
        self.stderr = err
        self.json_mode = json_mode

    def line(self, text: str = "") -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def note(self, text: str) -> None:
        """Something for the person, not the pipe (stderr)."""
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def json(self, value: Any, *, compact: bool = False) -> None:
        self.line(json.dumps(_jsonable(value), indent=None if compact else 2, ensure_ascii=False))

    def fields(self, pairs: Sequence[tuple[str, object]]) -> None:
        width = max((len(name) for name, _ in pairs), default=0)
        for name, value in pairs:
            self.line(f"{name + ':':<{width + 1}} {show(value)}")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        if not rows:
            self.line("(none)")
            return
        cells = [[show(v) for v in row] for row in rows]
        widths = [len(h) for h in headers]
        for row in cells:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
        for row in [list(headers), *cells]:
            self.line("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def show(value: object) -> str:
    """One value as a person reads it in a table or a field list."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return when(value)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False) if value else "-"
    return str(value)


def when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@dataclass
class Context:
    out: Output
    stdin: BinaryIO
    url: str
    api_key: str | None
    timeout: float
    _client: Client | None = field(default=None, init=False)

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.url, self.api_key, timeout=self.timeout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
