"""``hookstream verify``: the receiver's side, offline. Checks a webhook's Standard Webhooks
signature (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) and its
``x-hub-signature-256``, and says why one fails.

An HMAC cannot tell a wrong secret from a changed body. What it can tell, this does: a
signature that matches once the usual accidents are undone (a trailing newline added by
``echo``, JSON re-serialised by a framework) means the body changed; a Standard Webhooks
signature that fails while ``x-hub-signature-256`` (body only) matches means the id or
timestamp changed; a signature that matches with a stale timestamp is a replay or a delay.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import timedelta

from hookstream_cli.context import Commands, Context, UsageError
from hookstream_cli.inputs import parse_duration_arg, parse_header, read_body
from shared.signing import (
    HUB_PREFIX,
    WHSEC_PREFIX,
    hub_signature,
    standard_webhooks_key,
    standard_webhooks_signature,
)

STANDARD = "standard-webhooks"
HUB = "x-hub-signature-256"
SW_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
# Standard Webhooks' reference libraries refuse a timestamp more than 5 minutes away.
DEFAULT_TOLERANCE = timedelta(minutes=5)
_HUB_VALUE = re.compile(r"sha256=[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class Check:
    scheme: str
    valid: bool
    reason: str


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> list[Check]:
    """One check per signature scheme present; the message is valid when all pass."""
    lower = {name.strip().lower(): value.strip() for name, value in headers.items()}
    has_standard = any(name in lower for name in SW_HEADERS)
    hub = _check_hub(secret, lower[HUB], body) if HUB in lower else None
    checks = []
    if has_standard:
        checks.append(_check_standard(secret, lower, body, now, tolerance, hub))
    if hub is not None:
        checks.append(hub)
    if not checks:
        checks.append(
            Check(
                "none",
                False,
                "no signature header: expected webhook-id, webhook-timestamp and "
                "webhook-signature (Standard Webhooks) or x-hub-signature-256",
            )
        )
    return checks


def _check_hub(secret: str, value: str, body: bytes) -> Check:
    if not _HUB_VALUE.fullmatch(value):
        return Check(HUB, False, f"malformed {HUB}: expected {HUB_PREFIX}<64 hex digits>")

    def matches(candidate: bytes) -> bool:
        return hmac.compare_digest(hub_signature(secret, candidate), value.lower())

    if matches(body):
        return Check(HUB, True, "the HMAC-SHA256 of the body matches")
    return Check(HUB, False, _mismatch(matches, body, "the body"))


def _check_standard(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance: timedelta,
    hub: Check | None,
) -> Check:
    missing = [name for name in SW_HEADERS if not headers.get(name)]
    if missing:
        return Check(STANDARD, False, f"missing header {', '.join(missing)}")
    msg_id, raw_timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if not raw_timestamp.isdigit():
        return Check(
            STANDARD, False, f"webhook-timestamp {raw_timestamp!r} is not a Unix time in seconds"
        )
    timestamp = int(raw_timestamp)
    signatures = _v1_signatures(headers["webhook-signature"])
    if not signatures:
        return Check(
            STANDARD, False, "webhook-signature holds no v1 signature (expected v1,<base64>)"
        )
    keys = list(_candidate_keys(secret))

    def matches(candidate: bytes) -> bool:
        for key in keys:
            expected = standard_webhooks_signature(key, msg_id, timestamp, candidate)[3:]
            expected_bytes = base64.b64decode(expected)
            if any(hmac.compare_digest(expected_bytes, sig) for sig in signatures):
                return True
        return False

    age = now - timestamp
    limit = tolerance.total_seconds()
    stale = None
    if age > limit:
        stale = f"stale timestamp: signed {age:.0f} s ago, past the tolerance of {limit:.0f} s"
    elif -age > limit:
        stale = (
            f"timestamp {-age:.0f} s in the future, past the tolerance of {limit:.0f} s "
            "(is a clock wrong?)"
        )
    if matches(body):
        if stale:
            return Check(STANDARD, False, f"{stale} (the signature itself matches: a replay?)")
        return Check(STANDARD, True, f"a v1 signature matches; signed {max(age, 0):.0f} s ago")
    if hub is not None and hub.valid:
        reason = (
            "signature mismatch: webhook-id or webhook-timestamp changed after signing "
            f"(the secret and body are right: {HUB} matches)"
        )
    else:
        reason = _mismatch(matches, body, "the body, webhook-id or webhook-timestamp")
    return Check(STANDARD, False, f"{reason}; also {stale}" if stale else reason)


def _mismatch(matches: Callable[[bytes], bool], body: bytes, signed: str) -> str:
    for candidate, what in _altered_bodies(body):
        if matches(candidate):
            return f"body changed after signing: {what}; verify the exact bytes received"
    return (
        f"signature mismatch: wrong secret, or {signed} changed after signing "
        "(an HMAC cannot tell which)"
    )


def _altered_bodies(body: bytes) -> Iterator[tuple[bytes, str]]:
    """What the sender may have signed, when the bytes here are not it."""
    stripped = body.rstrip(b"\r\n")
    if stripped != body:
        yield stripped, "it ends with a newline the sender did not sign (echo adds one)"
    yield body + b"\n", "it lost a trailing newline"
    try:
        payload = json.loads(body)
    except ValueError:
        return
    forms = {
        json.dumps(payload).encode(),
        json.dumps(payload, separators=(",", ":")).encode(),
        json.dumps(payload, sort_keys=True).encode(),
        json.dumps(payload, separators=(",", ":"), sort_keys=True).encode(),
        json.dumps(payload, indent=2).encode(),
        json.dumps(payload, ensure_ascii=False).encode(),
        json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode(),
    }
    for form in forms - {body}:
        yield form, "the JSON was re-serialised (spacing, key order or escapes differ)"


def _v1_signatures(header: str) -> list[bytes]:
    found = []
    for item in header.split():
        version, _, value = item.partition(",")
        if version != "v1" or not value:
            continue
        try:
            found.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def _candidate_keys(secret: str) -> Iterator[bytes]:
    """Hookstream's rule (``whsec_`` + base64, otherwise the secret's bytes), then the
    reference libraries' (the text after ``whsec_``, or all of it, is base64)."""
    first = standard_webhooks_key(secret)
    yield first
    text = secret.removeprefix(WHSEC_PREFIX)
    try:
        decoded = base64.b64decode(text + "==")
    except (binascii.Error, ValueError):
        return
    if decoded and decoded != first:
        yield decoded


# --- command ------------------------------------------------------------------------


def register(commands: Commands, parents: list[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "verify",
        parents=parents,
        help="check a received webhook's signatures offline (the receiver's side)",
        description="Verify a webhook the way a receiver should: the Standard Webhooks "
        "signature (webhook-id, webhook-timestamp, webhook-signature) and "
        "x-hub-signature-256, over the exact body bytes (read from stdin, or --body). "
        "Says why a check fails. Exit 0 when every signature present is valid, 1 if not.",
        epilog="example: hookstream verify --secret whsec_... -H 'webhook-id: msg_1' "
        "-H 'webhook-timestamp: 1767225600' -H 'webhook-signature: v1,...' < body.json",
    )
    parser.add_argument("--secret", required=True, help="the subscription's signing secret")
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a header as received (repeat for each)",
    )
    parser.add_argument(
        "--body",
        default="@-",
        metavar="@FILE",
        help="the body: @FILE, or @- for stdin (the default)",
    )
    parser.add_argument(
        "--tolerance",
        default="5m",
        metavar="DURATION",
        help="how far webhook-timestamp may be from now (default 5m)",
    )
    parser.set_defaults(handler=run_verify)


def run_verify(ctx: Context, args: argparse.Namespace) -> int:
    headers: dict[str, str] = {}
    for text in args.header:
        name, value = parse_header(text)
        headers[name.lower()] = value
    if not args.body.startswith("@"):
        raise UsageError("--body takes @FILE or @- (the bytes are verified as they are)")
    body = read_body(args.body, ctx.stdin, "--body")
    tolerance = parse_duration_arg(args.tolerance, "--tolerance")
    checks = verify(args.secret, headers, body, now=time.time(), tolerance=tolerance)
    valid = all(check.valid for check in checks)
    if ctx.out.json_mode:
        ctx.out.json({"valid": valid, "checks": [asdict(check) for check in checks]})
    else:
        for check in checks:
            state = "valid" if check.valid else "invalid"
            ctx.out.line(f"{state}: {check.scheme}: {check.reason}")
    return 0 if valid else 1
