"""``send`` (to one subscription, as an outside sender) and ``publish`` (fan-out)."""

from __future__ import annotations

import argparse

from hookstream_cli.context import CliError, Commands, Context
from hookstream_cli.inputs import read_json_body
from shared.client import ApiError

_DATA_HELP = "the JSON body: inline, @FILE, or @- for stdin; sent byte for byte"


def register(commands: Commands, parents: list[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "send",
        parents=parents,
        help="send a webhook to one subscription (POST /ingest/ID)",
        description="Send a webhook to one subscription as an outside sender does: "
        "POST /ingest/SUBSCRIPTION_ID, signed with x-hub-signature-256 when --secret is "
        "given (a subscription with a secret refuses unsigned webhooks). No API key needed.",
    )
    p.add_argument("subscription_id", metavar="SUBSCRIPTION_ID")
    p.add_argument("--event", required=True, metavar="TYPE", help="the event type")
    p.add_argument("--data", required=True, metavar="JSON", help=_DATA_HELP)
    p.add_argument("--secret", help="the subscription's secret, to sign the body with")
    p.add_argument("--idempotency-key", help="a repeat with the same key sends nothing")
    p.set_defaults(handler=send)

    p = commands.add_parser(
        "publish",
        parents=parents,
        help="publish an event to every matching subscription of an application",
        description="Publish an event (POST /applications/APP/events, or POST /events "
        "without --app): every active subscription of the application whose event types "
        "and filter match gets it.",
    )
    p.add_argument("--app", help="application id or uid (default: the default one, or the key's)")
    p.add_argument("--event", required=True, metavar="TYPE", help="the event type")
    p.add_argument("--data", required=True, metavar="JSON", help=_DATA_HELP)
    p.add_argument("--idempotency-key", help="a repeat with the same key publishes nothing")
    p.set_defaults(handler=publish)


def send(ctx: Context, args: argparse.Namespace) -> int:
    body = read_json_body(args.data, ctx.stdin, "--data")
    try:
        answer = ctx.client.send(
            args.subscription_id,
            body,
            event_type=args.event,
            secret=args.secret,
            idempotency_key=args.idempotency_key,
        )
    except ApiError as exc:
        if exc.status != 401:
            raise
        hint = (
            "--secret is not this subscription's secret"
            if args.secret
            else "the subscription has a secret: pass it with --secret"
        )
        raise CliError(f"the signature was refused ({exc}): {hint}") from None
    if ctx.out.json_mode:
        ctx.out.json(answer)
    elif answer.status == "accepted":
        ctx.out.line(f"accepted: delivery {answer.delivery_id} (event {answer.event_id})")
    else:
        ctx.out.line(f"filtered ({answer.reason}): {answer.message}")
    return 0


def publish(ctx: Context, args: argparse.Namespace) -> int:
    body = read_json_body(args.data, ctx.stdin, "--data")
    answer = ctx.client.publish(
        body, event_type=args.event, app=args.app, idempotency_key=args.idempotency_key
    )
    if ctx.out.json_mode:
        ctx.out.json(answer)
    else:
        ctx.out.line(f"accepted: event {answer.event_id}")
    return 0
