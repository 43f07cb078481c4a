"""``deliveries show|list|tail``, ``retry`` and ``replay``: what happened, and doing it again.

The service has no search over every delivery yet (``GET /status/deliveries`` is issue
16's). Until it has, ``list`` and ``tail`` read what exists: one subscription's latest
attempts, the dead-letter list for FAILURE, and, with no subscription named, each of the
first ``MAX_WALK`` subscriptions the key sees in turn (one request per subscription).
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from hookstream_cli.context import Commands, Context, UsageError, show, when
from hookstream_cli.inputs import parse_duration_arg, parse_since
from shared.client import Attempt, DeadLetter

STATES = ("SUCCESS", "FAILED_ATTEMPT", "FAILURE")
# The status route's own bound on the attempts one answer holds.
MAX_ATTEMPTS = 1000
# Walking subscriptions costs a request each per listing (and per poll when tailing):
# past 100 a second's poll would be a small load test. Name one with --subscription.
MAX_WALK = 100
# Latest attempts read per subscription and poll when tailing: more new attempts than
# this between two polls (100/s at the default interval) and the oldest go unprinted.
TAIL_WINDOW = 100


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
        description="Deliveries with their latest attempt, newest first. With "
        "--subscription: that subscription's latest 1000 attempts. Without: --status "
        f"FAILURE reads the dead-letter list; otherwise the first {MAX_WALK} subscriptions "
        "are read one by one.",
    )
    _filters(p)
    p.add_argument(
        "--since", help="only those whose latest attempt is newer: 1h, 2d, or a date-time"
    )
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.set_defaults(handler=list_deliveries)

    p = actions.add_parser(
        "tail",
        parents=parents,
        help="print new attempts as they happen (Ctrl-C stops)",
        description="Follow new delivery attempts, like tail -f, until Ctrl-C. With "
        "--json, one JSON object per line.",
    )
    _filters(p)
    p.add_argument(
        "-n", "--lines", type=int, default=10, help="print the last N attempts first (default 10)"
    )
    p.add_argument("--interval", default="1s", metavar="DURATION", help="poll period (1s)")
    p.add_argument("--count", type=int, help="stop after printing this many attempts")
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


def _row(item: Attempt | DeadLetter) -> dict[str, Any]:
    if isinstance(item, DeadLetter):
        return {
            "delivery_id": item.delivery_id,
            "subscription_id": item.subscription_id,
            "event_id": item.event_id,
            "event_type": item.event_type,
            "status": "FAILURE",
            "attempt_number": item.attempts,
            "status_code": item.last_status_code,
            "error": item.last_error,
            "at": item.failed_at,
        }
    return {
        "delivery_id": item.delivery_id,
        "subscription_id": item.subscription_id,
        "event_id": item.event_id,
        "event_type": item.event_type,
        "status": item.status,
        "attempt_number": item.attempt_number,
        "status_code": item.status_code,
        "error": item.error_details,
        "at": item.created_at,
        "attempt_id": item.id,
        "trigger": item.trigger,
        "duration_ms": item.duration_ms,
    }


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, uuid.UUID) else v
        for k, v in row.items()
    }


def _one_line(text: str | None, width: int = 60) -> str | None:
    if text is None:
        return None
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _subscriptions(ctx: Context, subscription: str | None, *, quiet: bool = False) -> list[str]:
    """The one named, or the first MAX_WALK the key sees (listed again on every call, so a
    tail follows subscriptions created after it started)."""
    if subscription is not None:
        return [subscription]
    subs = ctx.client.list_subscriptions(limit=MAX_WALK + 1)
    if len(subs) > MAX_WALK and not quiet:
        ctx.out.note(
            f"note: reading the first {MAX_WALK} subscriptions only; name one with --subscription"
        )
    return [str(s.id) for s in subs[:MAX_WALK]]


def _attempts(ctx: Context, subscriptions: Iterable[str], per_subscription: int) -> list[Attempt]:
    """Latest attempts of these subscriptions, newest first."""
    found: list[Attempt] = []
    for sub in subscriptions:
        found += ctx.client.subscription_deliveries(sub, limit=per_subscription).recent_logs
    found.sort(key=lambda a: (a.created_at, a.attempt_number), reverse=True)
    return found


def latest_per_delivery(attempts: Sequence[Attempt]) -> list[Attempt]:
    """Newest first in, newest first out: each delivery's latest attempt."""
    seen: set[uuid.UUID] = set()
    latest = []
    for attempt in attempts:
        if attempt.delivery_id not in seen:
            seen.add(attempt.delivery_id)
            latest.append(attempt)
    return latest


def list_deliveries(ctx: Context, args: argparse.Namespace) -> int:
    since = parse_since(args.since) if args.since else None
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    items: list[Attempt | DeadLetter]
    if args.subscription is None and args.status == "FAILURE":
        letters = ctx.client.dead_letters(limit=MAX_ATTEMPTS).items
        items = [d for d in letters if since is None or d.failed_at >= since]
    else:
        subs = _subscriptions(ctx, args.subscription)
        latest = latest_per_delivery(_attempts(ctx, subs, MAX_ATTEMPTS))
        items = [
            a
            for a in latest
            if (args.status is None or a.status == args.status)
            and (since is None or a.created_at >= since)
        ]
    rows = [_row(item) for item in items[: args.limit]]
    if ctx.out.json_mode:
        ctx.out.json([_jsonable(r) for r in rows])
        return 0
    ctx.out.table(
        ["AT", "DELIVERY", "STATUS", "#", "CODE", "EVENT TYPE", "ERROR"],
        [
            (
                r["at"],
                r["delivery_id"],
                r["status"],
                r["attempt_number"],
                r["status_code"],
                r["event_type"],
                _one_line(r["error"], 40),
            )
            for r in rows
        ],
    )
    return 0


def tail(ctx: Context, args: argparse.Namespace) -> int:
    interval = parse_duration_arg(args.interval, "--interval").total_seconds()
    if interval <= 0:
        raise UsageError("--interval must be more than 0")
    if args.lines < 0 or (args.count is not None and args.count < 1):
        raise UsageError("--lines must be 0 or more and --count at least 1")
    seen: set[uuid.UUID] | None = None
    printed = 0
    while True:
        subs = _subscriptions(ctx, args.subscription, quiet=seen is not None)
        attempts = [
            a
            for a in _attempts(ctx, subs, TAIL_WINDOW)
            if args.status is None or a.status == args.status
        ]
        oldest_first = attempts[::-1]
        if seen is None:
            new = oldest_first[-args.lines :] if args.lines else []
        else:
            new = [a for a in oldest_first if a.id not in seen]
        for attempt in new:
            _print_attempt(ctx, attempt)
            printed += 1
            if args.count is not None and printed >= args.count:
                return 0
        if seen is None:
            what = f"subscription {subs[0]}" if args.subscription else f"{len(subs)} subscriptions"
            ctx.out.note(f"following {what} (Ctrl-C stops)")
        # Only what the window still holds: an attempt that left it cannot come back.
        seen = {a.id for a in attempts}
        time.sleep(interval)


def _print_attempt(ctx: Context, attempt: Attempt) -> None:
    if ctx.out.json_mode:
        ctx.out.json(_jsonable(_row(attempt)), compact=True)
        return
    parts = [
        when(attempt.created_at),
        f"{attempt.status:<14}",
        f"#{attempt.attempt_number}",
        show(attempt.status_code),
        attempt.event_type,
        f"delivery {attempt.delivery_id}",
        f"subscription {attempt.subscription_id}",
    ]
    if attempt.trigger != "ingest":
        parts.append(f"({attempt.trigger})")
    if attempt.error_details and attempt.status != "SUCCESS":
        parts.append(_one_line(attempt.error_details) or "")
    ctx.out.line("  ".join(parts))
