"""``events list``: what was ingested, newest first (``GET /status/events``)."""

from __future__ import annotations

import argparse

from hookstream_cli import search
from hookstream_cli.context import Commands, Context
from shared.client import EventRow, Page


def register(commands: Commands, parents: list[argparse.ArgumentParser]) -> None:
    group = commands.add_parser(
        "events",
        help="events as they were ingested",
        description="Events as ingested (published or sent), without their bodies.",
    )
    actions = group.add_subparsers(title="actions", dest="action", metavar="ACTION")
    actions.required = True

    p = actions.add_parser(
        "list",
        parents=parents,
        help="events, newest first (without their bodies)",
        description="Ingested events, newest first, without their bodies (GET "
        "/status/events): published to an application or sent to one subscription. "
        "--since/--until bound the time ingest received them. Pages are followed until "
        "--limit rows.",
    )
    search.add_filters(p)
    search.add_paging(p)
    p.set_defaults(handler=list_events)


def list_events(ctx: Context, args: argparse.Namespace) -> int:
    search.check_limit(args.limit)
    span = search.window(args)
    app = search.application_id(ctx, args.app)

    def fetch(limit: int, cursor: str | None) -> Page[EventRow]:
        return ctx.client.search_events(
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
        ["RECEIVED", "EVENT", "TYPE", "APPLICATION", "SUBSCRIPTION", "BYTES"],
        [
            (
                e.received_at,
                e.event_id,
                e.event_type,
                e.application_id,
                e.subscription_id,
                e.size_bytes,
            )
            for e in rows
        ],
    )
    search.footer(ctx, next_cursor)
    return 0
