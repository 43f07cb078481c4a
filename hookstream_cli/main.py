"""``hookstream``: the command line. Builds the parser from each command module, runs one
command, and turns every failure into one line on stderr and an exit status:

0 done (``verify``: valid), 1 refused or failed (``verify``: invalid), 2 bad arguments,
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import BinaryIO, NoReturn, TextIO

from hookstream_cli import backfills, deliveries, events, management, sending, verify
from hookstream_cli.context import CliError, Context, Output
from shared.client import DEFAULT_TIMEOUT, DEFAULT_URL, ApiError, ClientError, Unreachable

PROG = "hookstream"
INTERRUPTED = 130

_LABELS = {
    403: "forbidden",
    404: "not found",
    409: "conflict",
    410: "gone",
    413: "too large",
    422: "invalid input",
    429: "too many requests",
    503: "unavailable, try again later",
}


def _parser_class(out: TextIO, err: TextIO) -> type[argparse.ArgumentParser]:
    """argparse writes help and usage errors to sys.stdout/sys.stderr; these go to ours."""

    class Parser(argparse.ArgumentParser):
        def print_help(self, file: object = None) -> None:
            out.write(self.format_help())

        def print_usage(self, file: object = None) -> None:
            err.write(self.format_usage())

        def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
            if message:
                err.write(message)
            raise SystemExit(status)

    return Parser


def build_parser(out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> argparse.ArgumentParser:
    parser_class = _parser_class(out, err)
    # On the top parser and on every command, so `hookstream --json x` and `hookstream x
    # --json` both work; SUPPRESS keeps a command's absent flag from hiding the top one's.
    output = parser_class(add_help=False)
    output.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    connection = parser_class(add_help=False)
    group = connection.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"Hookstream's address (env HOOKSTREAM_URL; default {DEFAULT_URL})",
    )
    group.add_argument(
        "--api-key",
        default=argparse.SUPPRESS,
        help="the operator key or an application's hsk_ key (env HOOKSTREAM_API_KEY)",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help=f"per request (default {DEFAULT_TIMEOUT:.0f})",
    )
    parser = parser_class(
        prog=PROG,
        parents=[output, connection],
        description="Work with a Hookstream webhook service: applications, subscriptions, "
        "keys, sending, searching events and deliveries, redelivery, backfills, and offline "
        "signature checks.",
        epilog="Every command takes --help.",
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True
    remote = [output, connection]
    management.register(commands, remote)
    sending.register(commands, remote)
    deliveries.register(commands, remote)
    events.register(commands, remote)
    backfills.register(commands, remote)
    verify.register(commands, [output])
    return parser


def run(
    argv: Sequence[str] | None = None,
    *,
    stdin: BinaryIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run one command; returns the exit status (never raises, except to exit)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    environ = os.environ if env is None else env
    try:
        args = build_parser(out, err).parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    api_key = getattr(args, "api_key", None) or environ.get("HOOKSTREAM_API_KEY") or None
    ctx = Context(
        out=Output(out, err, json_mode=getattr(args, "json", False)),
        stdin=stdin or sys.stdin.buffer,
        url=getattr(args, "url", None) or environ.get("HOOKSTREAM_URL") or DEFAULT_URL,
        api_key=api_key,
        timeout=getattr(args, "timeout", DEFAULT_TIMEOUT),
    )
    try:
        code: int = args.handler(ctx, args)
        return code
    except CliError as exc:
        return _fail(err, exc.message, exc.code)
    except ApiError as exc:
        return _fail(err, describe(exc, api_key is not None))
    except Unreachable as exc:
        return _fail(err, f"{exc} (is Hookstream running there? set HOOKSTREAM_URL or --url)")
    except ClientError as exc:
        return _fail(err, str(exc))
    except KeyboardInterrupt:
        return INTERRUPTED
    finally:
        ctx.close()


def describe(exc: ApiError, had_key: bool) -> str:
    if exc.status == 401:
        if not had_key:
            return f"no API key: set HOOKSTREAM_API_KEY or pass --api-key ({exc})"
        return f"the API key was refused ({exc})"
    label = _LABELS.get(exc.status, "server error" if exc.status >= 500 else "refused")
    return f"{label}: {exc.message} (HTTP {exc.status})"


def _fail(err: TextIO, message: str, code: int = 1) -> int:
    err.write(f"{PROG}: error: {message}\n")
    err.flush()
    return code


def main() -> None:
    """The console script."""
    try:
        code = run()
        sys.stdout.flush()
    except BrokenPipeError:
        # `hookstream ... | head`: the reader left; say nothing more (and let the
        # interpreter's final flush go nowhere rather than print a traceback).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)
