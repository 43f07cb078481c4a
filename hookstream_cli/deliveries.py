"""``deliveries show|list|tail``, ``retry`` and ``replay``: what happened, and doing it again.

``list`` and ``tail`` read ``GET /status/deliveries``: one row per delivery, its latest
attempt, newest first. ``tail`` polls it rather than reading attempts: no route lists the
attempts of every subscription, and a delivery's row comes back to the top with each new
attempt, so each poll prints the deliveries whose latest attempt is new. Two attempts of
one delivery within one poll period print as the later one only; retries are 10 s apart
at the least (HOOKSTREAM_RETRY_SCHEDULE's default), a poll period is 1 s.
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import datetime, timedelta

from hookstream_cli import search
from hookstream_cli.context import Commands, Context, UsageError, show, when
from hookstream_cli.inputs import parse_duration_arg, parse_since
from shared.client import AttemptState, DeliveryRow, Page

STATES = ("SUCCESS", "FAILED_ATTEMPT", "FAILURE")
# Attempt rows reach the database in group commits about 20 ms after their time
# (services/dispatcher/batching.py), stamped by the dispatcher's clock. Each poll reads
# this far back again so that a row committed late, behind one already printed, still
# prints; a row later than this (a database outage, a clock off by seconds) does not.
LAG = timedelta(seconds=5)
# Pages of 500 one poll may read: 10,000 deliveries changed within one poll period plus
# LAG. Past that the oldest go unprinted (and a note says so): filter the tail instead.
MAX_POLL_PAGES = 20


def register(commands: Commands, parents: list[argparse.ArgumentParser]) -> None:
    group = commands.add_parser(
        "deliveries",
        help="what happened to deliveries",
        description="What happened to deliveries: one in full, a list, or new attempts "
        "as they happen.",
    )
    actions = group.add_subparsers(title="actions", dest="action", metavar="ACTION")
    actions.required = True

    p = actions.add_parser("show", parents=parents, help="every attempt of one delivery")
    p.add_argument("delivery_id", metavar="DELIVERY_ID", help="= the webhook-id targets see")
    p.set_defaults(handler=show_delivery)

    p = actions.add_parser(
        "list",
        parents=parents,
        help="deliveries and their latest state, newest first",
        description="Deliveries, one row each with its latest attempt, newest first "
        "(GET /status/deliveries). Every filter applies to the latest attempt: --status "
        "FAILED_ATTEMPT finds the deliveries still retrying, --since/--until bound the "
        "latest attempt's time. Pages are followed until --limit rows.",
    )
    _filters(p)
    search.add_filters(p)
    search.add_paging(p)
    p.set_defaults(handler=list_deliveries)

    p = actions.add_parser(
        "tail",
        parents=parents,
        help="print deliveries as they get new attempts (Ctrl-C stops)",
        description="Follow deliveries, like tail -f, until Ctrl-C: polls GET "
        "/status/deliveries and prints each delivery whose latest attempt is new (two "
        "attempts of one delivery within one poll print as the later). With --json, one "
        "JSON object per line.",
    )
    _filters(p)
    search.add_filters(p, window=False)
    p.add_argument(
        "-n",
        "--lines",
        type=int,
        default=10,
        help="print the latest N deliveries first (default 10)",
    )
    p.add_argument("--interval", default="1s", metavar="DURATION", help="poll period (1s)")
    p.add_argument("--count", type=int, help="stop after printing this many")
    p.set_defaults(handler=tail)

    p = commands.add_parser(
        "retry",
        parents=parents,
        help="deliver one delivery again (a fresh attempt series)",
        description="Deliver again: a fresh attempt series for a delivery that has ended "
        "(SUCCESS or FAILURE), with trigger manual-retry.",
    )
    p.add_argument("delivery_id", metavar="DELIVERY_ID")
    p.set_defaults(handler=retry)

    p = commands.add_parser(
        "replay",
        parents=parents,
        help="re-send a subscription's failed deliveries since a time",
        description="Re-send every delivery of a subscription whose latest attempt since "
        "--since is FAILURE (at most 1000 per call), with trigger replay.",
    )
    p.add_argument("subscription_id", metavar="SUBSCRIPTION_ID")
    p.add_argument("--since", help="1h, 2d, or a date-time with offset (default: 24 h ago)")
    p.set_defaults(handler=replay)


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subscription", metavar="ID", help="only this subscription's")
    p.add_argument(
        "--status", type=str.upper, choices=STATES, help="only those whose latest state is this"
    )


# --- show, retry, replay ------------------------------------------------------------


def show_delivery(ctx: Context, args: argparse.Namespace) -> int:
    delivery = ctx.client.delivery(args.delivery_id)
    if ctx.out.json_mode:
        ctx.out.json(delivery)
        return 0
    ctx.out.fields(
        [
            ("delivery", delivery.delivery_id),
            ("subscription", delivery.subscription_id),
            ("event", delivery.event_id),
            ("event type", delivery.latest_attempt.event_type),
            ("target", delivery.latest_attempt.target_url),
            ("status", delivery.latest_status),
            ("attempts", delivery.total_attempts),
        ]
    )
    ctx.out.line()
    ctx.out.table(
        ["AT", "#", "STATUS", "CODE", "MS", "TRIGGER", "ERROR"],
        [
            (
                a.created_at,
                a.attempt_number,
                a.status,
                a.status_code,
                a.duration_ms,
                a.trigger,
                _one_line(a.error_details),
            )
            for a in delivery.logs
        ],
    )
    return 0


def retry(ctx: Context, args: argparse.Namespace) -> int:
    answer = ctx.client.retry(args.delivery_id)
    if ctx.out.json_mode:
        ctx.out.json(answer)
    else:
        ctx.out.line(f"queued: delivery {answer.delivery_id} again ({answer.trigger})")
    return 0


def replay(ctx: Context, args: argparse.Namespace) -> int:
    since = parse_since(args.since) if args.since else None
    answer = ctx.client.replay(args.subscription_id, since)
    if ctx.out.json_mode:
        ctx.out.json(answer)
        return 0
    ctx.out.line(
        f"queued: {answer.replayed} failed deliveries again (failed since {when(answer.since)})"
    )
    for delivery_id in answer.delivery_ids:
        ctx.out.line(f"  {delivery_id}")
    if answer.expired:
        ctx.out.note(f"{answer.expired} more are past retention: nothing left to send")
    return 0


# --- list and tail ------------------------------------------------------------------


def _one_line(text: str | None, width: int = 60) -> str | None:
    if text is None:
        return None
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _row_cells(row: DeliveryRow) -> tuple[object, ...]:
    return (
        row.latest_attempt_at,
        row.delivery_id,
        row.status,
        row.attempt_number,
        row.status_code,
        row.event_type,
        _one_line(row.error_details, 40),
    )


def list_deliveries(ctx: Context, args: argparse.Namespace) -> int:
    search.check_limit(args.limit)
    span = search.window(args)
    app = search.application_id(ctx, args.app)

    def fetch(limit: int, cursor: str | None) -> Page[DeliveryRow]:
        return ctx.client.search_deliveries(
            status=args.status,
            subscription_id=args.subscription,
            event_type=args.event,
            application_id=app,
            since=span.since,
            until=span.until,
            limit=limit,
            cursor=cursor,
        )

    rows, next_cursor = search.walk(fetch, args.limit, args.cursor)
    if ctx.out.json_mode:
        ctx.out.json({"data": rows, "next_cursor": next_cursor})
        return 0
    ctx.out.table(
        ["AT", "DELIVERY", "STATUS", "#", "CODE", "EVENT TYPE", "ERROR"],
        [_row_cells(row) for row in rows],
    )
    search.footer(ctx, next_cursor)
    return 0


Key = tuple[uuid.UUID, datetime, int]


def _key(row: DeliveryRow) -> Key:
    """One attempt: the delivery and its latest attempt's time (and number: a manual retry
    starts a new series at 1)."""
    return (row.delivery_id, row.latest_attempt_at, row.attempt_number)


class Follower:
    """What ``tail`` has printed: the deliveries' latest attempts seen within ``LAG`` of
    the newest, and the newest time seen (``mark``), the server's clock only."""

    def __init__(self, mark: datetime | None) -> None:
        self.mark = mark
        self.seen: dict[Key, datetime] = {}

    def since(self) -> datetime | None:
        return None if self.mark is None else self.mark - LAG

    def fresh(self, newest_first: list[DeliveryRow]) -> list[DeliveryRow]:
        """The rows not seen before, oldest first; remembers them all."""
        new = [row for row in reversed(newest_first) if _key(row) not in self.seen]
        self.remember(newest_first)
        return new

    def remember(self, rows: list[DeliveryRow]) -> None:
        for row in rows:
            self.seen[_key(row)] = row.latest_attempt_at
            if self.mark is None or row.latest_attempt_at > self.mark:
                self.mark = row.latest_attempt_at
        # What is older than the next poll's window cannot come back.
        horizon = self.since()
        if horizon is not None:
            self.seen = {k: at for k, at in self.seen.items() if at >= horizon}


def tail(ctx: Context, args: argparse.Namespace) -> int:
    interval = parse_duration_arg(args.interval, "--interval").total_seconds()
    if interval <= 0:
        raise UsageError("--interval must be more than 0")
    if args.lines < 0 or (args.count is not None and args.count < 1):
        raise UsageError("--lines must be 0 or more and --count at least 1")
    app = search.application_id(ctx, args.app)

    def fetch(
        limit: int,
        cursor: str | None,
        *,
        status: AttemptState | None = None,
        since: datetime | None = None,
    ) -> Page[DeliveryRow]:
        return ctx.client.search_deliveries(
            status=status,
            subscription_id=args.subscription,
            event_type=args.event,
            application_id=app,
            since=since,
            limit=limit,
            cursor=cursor,
        )

    def changed(follower: Follower) -> list[DeliveryRow]:
        """Every delivery whose latest attempt is in the window, newest first. Without
        --status on the server: the filter would leave the mark behind while nothing
        matches, and a first page holds the newest row only without it."""
        rows, more = search.walk(
            lambda limit, cursor: fetch(limit, cursor, since=follower.since()),
            MAX_POLL_PAGES * search.MAX_PAGE,
            None,
        )
        if more is not None:
            ctx.out.note(
                f"note: more than {len(rows)} deliveries changed within one poll; the "
                "oldest are not printed (narrow with --subscription, --event or --app)"
            )
        return rows

    printed = 0

    def emit(rows: list[DeliveryRow]) -> bool:
        """Prints them; True once --count is reached."""
        nonlocal printed
        for row in rows:
            if args.status is not None and row.status != args.status:
                continue
            _print_row(ctx, row)
            printed += 1
            if args.count is not None and printed >= args.count:
                return True
        return False

    newest = fetch(1, None).data
    follower = Follower(newest[0].latest_attempt_at if newest else None)
    follower.remember(changed(follower))
    if args.lines:
        backlog, _ = search.walk(
            lambda limit, cursor: fetch(limit, cursor, status=args.status), args.lines, None
        )
        follower.remember(backlog)
        if emit(backlog[::-1]):
            return 0
    ctx.out.note(f"following {_following(args)} (Ctrl-C stops)")
    while True:
        time.sleep(interval)
        if emit(follower.fresh(changed(follower))):
            return 0


def _following(args: argparse.Namespace) -> str:
    scope = [
        f"{name} {value}"
        for name, value in (
            ("subscription", args.subscription),
            ("event type", args.event),
            ("application", args.app),
            ("status", args.status),
        )
        if value is not None
    ]
    return "deliveries of " + ", ".join(scope) if scope else "every delivery the key sees"


def _print_row(ctx: Context, row: DeliveryRow) -> None:
    if ctx.out.json_mode:
        ctx.out.json(row, compact=True)
        return
    parts = [
        when(row.latest_attempt_at),
        f"{row.status:<14}",
        f"#{row.attempt_number}",
        show(row.status_code),
        row.event_type,
        f"delivery {row.delivery_id}",
        f"subscription {row.subscription_id}",
    ]
    if row.trigger != "ingest":
        parts.append(f"({row.trigger})")
    if row.error_details and row.status != "SUCCESS":
        parts.append(_one_line(row.error_details) or "")
    ctx.out.line("  ".join(parts))
