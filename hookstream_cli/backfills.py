"""``backfill`` and ``backfills show|cancel``: deliver a past window of the event log to
one subscription (``POST /subscriptions/{id}/backfill``), and follow or stop it."""

from __future__ import annotations

import argparse
import time

from hookstream_cli.context import CliError, Commands, Context, UsageError, when
from hookstream_cli.inputs import parse_since
from shared.client import Backfill

# The worker saves its progress every 0.5 s (services/janitor/backfill.py): polling
# faster would only read the same counts again.
WAIT_POLL = 0.5


def register(commands: Commands, parents: list[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "backfill",
        parents=parents,
        help="deliver a subscription the past events it takes (from the event log)",
        description="Deliver to a subscription the events of a past window that it takes "
        "(its event types and filter as they are now), read back from the event log, with "
        "trigger backfill. A delivery that already succeeded is not sent again. Without "
        "--wait, prints the backfill and returns while it runs.",
        epilog="example: hookstream backfill SUBSCRIPTION_ID --since 2h --wait",
    )
    p.add_argument("subscription_id", metavar="SUBSCRIPTION_ID")
    p.add_argument(
        "--since",
        required=True,
        help="the window's start (included): 2h, 3d, or a date-time with offset",
    )
    p.add_argument("--until", help="the window's end (included; default now): the same forms")
    p.add_argument(
        "--wait",
        action="store_true",
        help="print progress until it ends; exit 1 if it is cancelled or fails",
    )
    p.set_defaults(handler=start)

    group = commands.add_parser(
        "backfills",
        help="a backfill's progress, or stopping it",
        description="Show a backfill's progress, or cancel it.",
    )
    actions = group.add_subparsers(title="actions", dest="action", metavar="ACTION")
    actions.required = True

    p = actions.add_parser("show", parents=parents, help="a backfill's state and progress")
    p.add_argument("backfill_id", metavar="BACKFILL_ID")
    p.set_defaults(handler=show)

    p = actions.add_parser(
        "cancel",
        parents=parents,
        help="stop a running backfill (what it already published is still delivered)",
    )
    p.add_argument("backfill_id", metavar="BACKFILL_ID")
    p.set_defaults(handler=cancel)


def _counts(backfill: Backfill) -> str:
    return (
        f"{backfill.scanned} events read, {backfill.matched} matched, "
        f"{backfill.published} published"
    )


def _progress(backfill: Backfill) -> str:
    return f"{backfill.status}: {_counts(backfill)}"


def _show(ctx: Context, backfill: Backfill) -> None:
    if ctx.out.json_mode:
        ctx.out.json(backfill)
        return
    ctx.out.fields(
        [
            ("id", backfill.id),
            ("subscription", backfill.subscription_id),
            ("status", backfill.status),
            ("window", f"{when(backfill.since)} to {when(backfill.until)}"),
            ("events read", backfill.scanned),
            ("matched", backfill.matched),
            ("published", backfill.published),
            ("error", backfill.error),
            ("created", backfill.created_at),
            ("finished", backfill.finished_at),
        ]
    )


def start(ctx: Context, args: argparse.Namespace) -> int:
    since = parse_since(args.since)
    until = parse_since(args.until, "--until") if args.until else None
    if until is not None and since >= until:
        raise UsageError("--since must be earlier than --until")
    backfill = ctx.client.start_backfill(args.subscription_id, since, until)
    if not args.wait:
        _show(ctx, backfill)
        if not ctx.out.json_mode:
            ctx.out.note(f"running: hookstream backfills show {backfill.id} follows it")
        return 0
    return _wait(ctx, backfill)


def _wait(ctx: Context, backfill: Backfill) -> int:
    """Polls until it ends, with a progress line on stderr whenever it moved; then the
    final state on stdout."""
    ctx.out.note(f"backfill {backfill.id}: waiting until it ends (Ctrl-C stops waiting)")
    last = ""
    try:
        while True:
            progress = _progress(backfill)
            if progress != last:
                ctx.out.note(progress)
                last = progress
            if backfill.status != "running":
                break
            time.sleep(WAIT_POLL)
            backfill = ctx.client.get_backfill(backfill.id)
    except KeyboardInterrupt:
        ctx.out.note(
            f"stopped waiting; the backfill goes on (hookstream backfills cancel "
            f"{backfill.id} stops it)"
        )
        raise
    _show(ctx, backfill)
    if backfill.status == "failed":
        raise CliError(f"backfill {backfill.id} failed: {backfill.error or 'no reason given'}")
    if backfill.status == "cancelled":
        raise CliError(f"backfill {backfill.id} was cancelled")
    return 0


def show(ctx: Context, args: argparse.Namespace) -> int:
    _show(ctx, ctx.client.get_backfill(args.backfill_id))
    return 0


def cancel(ctx: Context, args: argparse.Namespace) -> int:
    backfill = ctx.client.cancel_backfill(args.backfill_id)
    if ctx.out.json_mode:
        ctx.out.json(backfill)
    elif backfill.status == "cancelled":
        ctx.out.line(f"backfill {backfill.id} cancelled after {_counts(backfill)}")
    else:
        ctx.out.line(f"backfill {backfill.id} had already ended: {_progress(backfill)}")
    return 0
