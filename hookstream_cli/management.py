"""``applications``, ``keys``, ``portal-link`` and ``subscriptions``: the management routes."""

from __future__ import annotations

import argparse
import base64
import secrets
from datetime import UTC, datetime
from typing import Any

from hookstream_cli.context import Commands, Context, UsageError, when
from hookstream_cli.inputs import json_object, parse_duration_arg, parse_header
from shared.client import ApiKey, Application, Page, Subscription
from shared.signing import WHSEC_PREFIX

Parsers = list[argparse.ArgumentParser]


def register(commands: Commands, parents: Parsers) -> None:
    _applications(commands, parents)
    _keys(commands, parents)
    _portal_link(commands, parents)
    _subscriptions(commands, parents)


def _group(commands: Commands, name: str, help_: str) -> Commands:
    parser = commands.add_parser(name, help=help_, description=help_)
    actions: Commands = parser.add_subparsers(title="actions", dest="action", metavar="ACTION")
    actions.required = True
    return actions


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    parser.add_argument("--cursor", help="the next_cursor of the previous page")


def _page_footer(ctx: Context, page: Page[Any]) -> None:
    if page.next_cursor:
        ctx.out.line(f"more: --cursor {page.next_cursor}")


# --- applications -------------------------------------------------------------------


def _applications(commands: Commands, parents: Parsers) -> None:
    actions = _group(commands, "applications", "applications: the tenants that own subscriptions")

    p = actions.add_parser("list", parents=parents, help="list applications, newest first")
    _paging(p)
    p.set_defaults(handler=list_applications)

    p = actions.add_parser("create", parents=parents, help="create an application")
    p.add_argument("--name", required=True)
    p.add_argument("--uid", help="your own unique id for it (e.g. your customer's id)")
    p.add_argument("--metadata", metavar="JSON", help="a JSON object, inline or @FILE")
    p.set_defaults(handler=create_application)

    p = actions.add_parser("show", parents=parents, help="one application")
    p.add_argument("app", metavar="APP", help="id or uid")
    p.set_defaults(handler=show_application)

    p = actions.add_parser("update", parents=parents, help="change name, uid or metadata")
    p.add_argument("app", metavar="APP", help="id or uid")
    p.add_argument("--name")
    uid = p.add_mutually_exclusive_group()
    uid.add_argument("--uid")
    uid.add_argument("--no-uid", action="store_true", help="remove the uid")
    p.add_argument("--metadata", metavar="JSON", help="replaces it: a JSON object or @FILE")
    p.set_defaults(handler=update_application)

    p = actions.add_parser(
        "delete",
        parents=parents,
        help="delete an application (its subscriptions stop, its keys are revoked)",
    )
    p.add_argument("app", metavar="APP", help="id or uid")
    p.set_defaults(handler=delete_application)


def _show_application(ctx: Context, app: Application) -> None:
    if ctx.out.json_mode:
        ctx.out.json(app)
        return
    ctx.out.fields(
        [
            ("id", app.id),
            ("uid", app.uid),
            ("name", app.name),
            ("metadata", app.metadata),
            ("created", app.created_at),
            ("updated", app.updated_at),
        ]
    )


def list_applications(ctx: Context, args: argparse.Namespace) -> int:
    page = ctx.client.list_applications(limit=args.limit, cursor=args.cursor)
    if ctx.out.json_mode:
        ctx.out.json(page)
        return 0
    ctx.out.table(
        ["ID", "UID", "NAME", "CREATED"], [(a.id, a.uid, a.name, a.created_at) for a in page.data]
    )
    _page_footer(ctx, page)
    return 0


def create_application(ctx: Context, args: argparse.Namespace) -> int:
    metadata = json_object(args.metadata, ctx.stdin, "--metadata") if args.metadata else None
    _show_application(
        ctx, ctx.client.create_application(args.name, uid=args.uid, metadata=metadata)
    )
    return 0


def show_application(ctx: Context, args: argparse.Namespace) -> int:
    _show_application(ctx, ctx.client.get_application(args.app))
    return 0


def update_application(ctx: Context, args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {}
    if args.name is not None:
        changes["name"] = args.name
    if args.uid is not None or args.no_uid:
        changes["uid"] = None if args.no_uid else args.uid
    if args.metadata is not None:
        changes["metadata"] = json_object(args.metadata, ctx.stdin, "--metadata")
    if not changes:
        raise UsageError("nothing to change: give --name, --uid, --no-uid or --metadata")
    _show_application(ctx, ctx.client.update_application(args.app, **changes))
    return 0


def delete_application(ctx: Context, args: argparse.Namespace) -> int:
    ctx.client.delete_application(args.app)
    _done(ctx, f"application {args.app} deleted")
    return 0


def _done(ctx: Context, message: str) -> None:
    if ctx.out.json_mode:
        ctx.out.json({"status": "ok", "message": message})
    else:
        ctx.out.line(message)


# --- keys and portal links ------------------------------------------------------------


def _keys(commands: Commands, parents: Parsers) -> None:
    actions = _group(commands, "keys", "API keys scoped to one application (hsk_...)")

    p = actions.add_parser("create", parents=parents, help="create a key (shown once: keep it)")
    p.add_argument("app", metavar="APP", help="application id or uid")
    p.add_argument("--name", required=True, help="what the key is for")
    p.add_argument("--expires-in", metavar="DURATION", help="e.g. 30d; default: never")
    p.set_defaults(handler=create_key)

    p = actions.add_parser("list", parents=parents, help="an application's keys (never the keys)")
    p.add_argument("app", metavar="APP", help="application id or uid")
    _paging(p)
    p.set_defaults(handler=list_keys)

    p = actions.add_parser("revoke", parents=parents, help="revoke a key")
    p.add_argument("app", metavar="APP", help="application id or uid")
    p.add_argument("key_id", metavar="KEY_ID", help="the key's id (from keys list)")
    p.set_defaults(handler=revoke_key)


def _portal_link(commands: Commands, parents: Parsers) -> None:
    p = commands.add_parser(
        "portal-link",
        parents=parents,
        help="a one-use link to an application's portal",
        description="Create a one-use link to an application's portal, where its owner "
        "sees its endpoints and deliveries.",
    )
    p.add_argument("app", metavar="APP", help="application id or uid")
    p.add_argument(
        "--expires-in", metavar="DURATION", help="how long it stays valid (1m to 1d; default 1h)"
    )
    p.set_defaults(handler=portal_link)


def _key_row(key: ApiKey) -> tuple[object, ...]:
    return (key.id, key.name, key.prefix + "…", key.created_at, key.expires_at, key.last_used_at)


def create_key(ctx: Context, args: argparse.Namespace) -> int:
    expires_at = None
    if args.expires_in:
        expires_at = datetime.now(UTC) + parse_duration_arg(args.expires_in, "--expires-in")
    key = ctx.client.create_key(args.app, args.name, expires_at=expires_at)
    if ctx.out.json_mode:
        ctx.out.json(key)
        return 0
    ctx.out.fields(
        [
            ("id", key.id),
            ("application", key.application_id),
            ("name", key.name),
            ("expires", key.expires_at or "never"),
            ("key", key.key),
        ]
    )
    ctx.out.note("The key is shown only this once: keep it now.")
    return 0


def list_keys(ctx: Context, args: argparse.Namespace) -> int:
    page = ctx.client.list_keys(args.app, limit=args.limit, cursor=args.cursor)
    if ctx.out.json_mode:
        ctx.out.json(page)
        return 0
    ctx.out.table(
        ["ID", "NAME", "PREFIX", "CREATED", "EXPIRES", "LAST USED"],
        [_key_row(k) for k in page.data],
    )
    _page_footer(ctx, page)
    return 0


def revoke_key(ctx: Context, args: argparse.Namespace) -> int:
    ctx.client.revoke_key(args.app, args.key_id)
    _done(ctx, f"key {args.key_id} revoked")
    return 0


def portal_link(ctx: Context, args: argparse.Namespace) -> int:
    expires_in = None
    if args.expires_in:
        expires_in = int(parse_duration_arg(args.expires_in, "--expires-in").total_seconds())
    link = ctx.client.portal_link(args.app, expires_in=expires_in)
    if ctx.out.json_mode:
        ctx.out.json(link)
    else:
        ctx.out.line(link.url)
        ctx.out.note(f"usable once, until {when(link.expires_at)}")
    return 0


# --- subscriptions ------------------------------------------------------------------


def _subscriptions(commands: Commands, parents: Parsers) -> None:
    actions = _group(commands, "subscriptions", "subscriptions: the endpoints webhooks go to")

    p = actions.add_parser(
        "list",
        parents=parents,
        help="every subscription the key sees (oldest first), or one application's (newest first)",
    )
    p.add_argument("--app", help="one application's (id or uid), by cursor")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.add_argument("--skip", type=int, default=0, help="skip this many (without --app)")
    p.add_argument("--cursor", help="the next_cursor of the previous page (with --app)")
    p.set_defaults(handler=list_subscriptions)

    p = actions.add_parser(
        "create", parents=parents, help="create a subscription (its secret is shown once)"
    )
    p.add_argument(
        "--target", required=True, metavar="URL", help="where deliveries go (http or https)"
    )
    p.add_argument("--app", help="in this application (default: the default one, or the key's)")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--secret", help="signing secret (default: none, nothing is signed)")
    secret.add_argument(
        "--generate-secret", action="store_true", help="generate a whsec_ secret and show it"
    )
    p.add_argument(
        "--event",
        action="append",
        default=[],
        metavar="TYPE",
        help="an event type to deliver (repeat; none: every type)",
    )
    p.add_argument("--inactive", action="store_true", help="create it switched off")
    _endpoint_options(p)
    _ordered_option(p, default=False)
    p.set_defaults(handler=create_subscription)

    p = actions.add_parser("show", parents=parents, help="one subscription (never its secret)")
    p.add_argument("subscription_id", metavar="SUBSCRIPTION_ID")
    p.set_defaults(handler=show_subscription)

    p = actions.add_parser("update", parents=parents, help="change fields of a subscription")
    p.add_argument("subscription_id", metavar="SUBSCRIPTION_ID")
    p.add_argument("--target", metavar="URL", help="a new target URL")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--secret", help="replace the secret at once (no overlap)")
    secret.add_argument("--no-secret", action="store_true", help="remove the secret")
    events = p.add_mutually_exclusive_group()
    events.add_argument(
        "--event", action="append", metavar="TYPE", help="replace the event types (repeat)"
    )
    events.add_argument("--all-events", action="store_true", help="deliver every event type")
    active = p.add_mutually_exclusive_group()
    active.add_argument("--active", action="store_true", help="switch on (clears a deactivation)")
    active.add_argument("--inactive", action="store_true", help="switch off")
    _endpoint_options(p, removable=True)
    _ordered_option(p, default=None)
    p.set_defaults(handler=update_subscription)

    p = actions.add_parser(
        "delete", parents=parents, help="delete a subscription (its history stays readable)"
    )
    p.add_argument("subscription_id", metavar="SUBSCRIPTION_ID")
    p.set_defaults(handler=delete_subscription)


def _endpoint_options(p: argparse.ArgumentParser, *, removable: bool = False) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--filter", metavar="JSON", help="conditions on the body (JSON or @FILE)")
    if removable:
        group.add_argument("--no-filter", action="store_true", help="remove the filter")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--header",
        action="append",
        metavar="'NAME: VALUE'",
        help="a header sent with every delivery (repeat"
        + ("; replaces them all)" if removable else ")"),
    )
    if removable:
        group.add_argument("--no-headers", action="store_true", help="remove custom headers")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--rate-limit", type=int, metavar="N", help="deliveries per second")
    if removable:
        group.add_argument("--no-rate-limit", action="store_true", help="remove the limit")


def _ordered_option(p: argparse.ArgumentParser, *, default: bool | None) -> None:
    p.add_argument(
        "--ordered",
        action=argparse.BooleanOptionalAction,
        default=default,
        help="deliver one at a time, in the order the events were accepted (each waits "
        "until the one before succeeded or failed for good)"
        + ("; default: concurrently" if default is False else ""),
    )


def _headers(values: list[str]) -> dict[str, str]:
    return dict(parse_header(text) for text in values)


def _show_subscription(ctx: Context, sub: Subscription) -> None:
    if ctx.out.json_mode:
        ctx.out.json(sub)
        return
    active = "yes" if sub.is_active else f"no ({sub.deactivated_reason or 'switched off'})"
    pairs: list[tuple[str, object]] = [
        ("id", sub.id),
        ("application", sub.application_id),
        ("target", sub.target_url),
        ("events", ", ".join(sub.event_types) or "every type"),
        ("active", active),
        ("filter", sub.filter),
        ("headers", ", ".join(sub.headers) if sub.headers else None),
        ("rate limit", f"{sub.rate_limit}/s" if sub.rate_limit else None),
        ("ordered", sub.ordered),
        ("created", sub.created_at),
        ("updated", sub.updated_at),
    ]
    if sub.secret_key is not None:
        pairs.append(("secret", sub.secret_key))
    ctx.out.fields(pairs)
    if sub.secret_key is not None:
        ctx.out.note("The secret is shown only this once: keep it now.")


def list_subscriptions(ctx: Context, args: argparse.Namespace) -> int:
    if args.app is None:
        if args.cursor:
            raise UsageError("--cursor pages one application's list: give --app too")
        subs = ctx.client.list_subscriptions(skip=args.skip, limit=args.limit)
        next_cursor = None
    else:
        if args.skip:
            raise UsageError("--skip is for the list without --app; use --cursor with --app")
        page = ctx.client.list_application_subscriptions(
            args.app, limit=args.limit, cursor=args.cursor
        )
        subs, next_cursor = page.data, page.next_cursor
    if ctx.out.json_mode:
        ctx.out.json(subs if args.app is None else page)
        return 0
    ctx.out.table(
        ["ID", "ACTIVE", "EVENTS", "TARGET"],
        [(s.id, s.is_active, ",".join(s.event_types) or "*", s.target_url) for s in subs],
    )
    if next_cursor:
        ctx.out.line(f"more: --cursor {next_cursor}")
    return 0


def generate_secret() -> str:
    """As the service generates one on rotation: ``whsec_`` + base64 of 32 random bytes."""
    return WHSEC_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def create_subscription(ctx: Context, args: argparse.Namespace) -> int:
    sub = ctx.client.create_subscription(
        args.target,
        app=args.app,
        secret_key=generate_secret() if args.generate_secret else args.secret,
        event_types=args.event,
        is_active=not args.inactive,
        filter=json_object(args.filter, ctx.stdin, "--filter") if args.filter else None,
        headers=_headers(args.header) if args.header else None,
        rate_limit=args.rate_limit,
        ordered=args.ordered,
    )
    _show_subscription(ctx, sub)
    return 0


def show_subscription(ctx: Context, args: argparse.Namespace) -> int:
    _show_subscription(ctx, ctx.client.get_subscription(args.subscription_id))
    return 0


def update_subscription(ctx: Context, args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {}
    if args.target is not None:
        changes["target_url"] = args.target
    if args.secret is not None or args.no_secret:
        changes["secret_key"] = None if args.no_secret else args.secret
    if args.event is not None or args.all_events:
        changes["event_types"] = [] if args.all_events else args.event
    if args.active or args.inactive:
        changes["is_active"] = args.active
    if args.filter is not None or args.no_filter:
        changes["filter"] = (
            None if args.no_filter else json_object(args.filter, ctx.stdin, "--filter")
        )
    if args.header is not None or args.no_headers:
        changes["headers"] = None if args.no_headers else _headers(args.header)
    if args.rate_limit is not None or args.no_rate_limit:
        changes["rate_limit"] = None if args.no_rate_limit else args.rate_limit
    if args.ordered is not None:
        changes["ordered"] = args.ordered
    if not changes:
        raise UsageError("nothing to change: see hookstream subscriptions update --help")
    _show_subscription(ctx, ctx.client.update_subscription(args.subscription_id, **changes))
    return 0


def delete_subscription(ctx: Context, args: argparse.Namespace) -> int:
    ctx.client.delete_subscription(args.subscription_id)
    _done(ctx, f"subscription {args.subscription_id} deleted")
    return 0
