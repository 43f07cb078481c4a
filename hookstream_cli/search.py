"""What ``deliveries list``, ``deliveries tail`` and ``events list`` share: the search
filters as flags, and walking the pages of ``GET /status/deliveries`` and
``GET /status/events`` by cursor."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from hookstream_cli.context import Context, UsageError
from hookstream_cli.inputs import parse_since
from shared.client import DeliveryRow, EventRow, Page

R = TypeVar("R", DeliveryRow, EventRow)

# The search routes' own bound on a page (services/ingest/search/routes.py MAX_LIMIT).
MAX_PAGE = 500


def add_filters(p: argparse.ArgumentParser, *, window: bool = True) -> None:
    """``--event``, ``--app`` and (with ``window``) ``--since``/``--until``."""
    p.add_argument("--event", metavar="TYPE", help="only this event type (exact)")
    p.add_argument("--app", help="only this application's (id or uid)")
    if window:
        p.add_argument(
            "--since", help="from this time on (inclusive): 1h, 2d, or a date-time with offset"
        )
        p.add_argument("--until", help="before this time (exclusive): the same forms as --since")


def add_paging(p: argparse.ArgumentParser, default: int = 50) -> None:
    p.add_argument(
        "--limit", type=int, default=default, help=f"at most this many (default {default})"
    )
    p.add_argument("--cursor", help="go on from the 'more: --cursor' of a previous listing")


@dataclass(frozen=True, slots=True)
class Window:
    since: datetime | None
    until: datetime | None


def window(args: argparse.Namespace) -> Window:
    """``--since`` and ``--until`` as times, refused with the flag's name when unreadable
    or when they leave nothing between them."""
    since = parse_since(args.since) if args.since else None
    until = parse_since(args.until, "--until") if args.until else None
    if since is not None and until is not None and since >= until:
        raise UsageError("--since must be earlier than --until")
    return Window(since, until)


def application_id(ctx: Context, app: str | None) -> uuid.UUID | None:
    """The search routes filter on the application's id: a uid is looked up first."""
    if app is None:
        return None
    try:
        return uuid.UUID(app)
    except ValueError:
        return ctx.client.get_application(app).id


def check_limit(limit: int) -> None:
    if limit < 1:
        raise UsageError("--limit must be at least 1")


def walk(
    fetch: Callable[[int, str | None], Page[R]], limit: int, cursor: str | None
) -> tuple[list[R], str | None]:
    """Up to ``limit`` rows from ``cursor`` on, following ``next_cursor`` past short or
    empty pages (a deliveries page looks at 2,000 attempts at most, so under a rare
    filter it can hold none while more follow). The cursor returned goes on from the
    last row: each page asks for no more than the rows still wanted."""
    rows: list[R] = []
    while True:
        page = fetch(min(limit - len(rows), MAX_PAGE), cursor)
        rows += page.data
        cursor = page.next_cursor
        if cursor is None or len(rows) >= limit:
            return rows, cursor


def footer(ctx: Context, next_cursor: str | None) -> None:
    if next_cursor:
        ctx.out.line(f"more: --cursor {next_cursor}")
