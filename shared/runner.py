"""Service runner: uvloop, signals, and the stop event every worker loop watches.

A worker service's ``__main__`` does::

    settings = Settings()
    run_worker("dispatcher", settings, main)   # main(settings, stop: asyncio.Event)

SIGTERM/SIGINT set ``stop``; the worker then stops fetching, drains in-flight work within
its deadline, commits and closes its resources in reverse order (an AsyncExitStack).
A second signal exits at once. Tracing (shared/tracing.py) starts before the service's
code and is shut down last, so the spans of the drain are exported too.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn

import uvloop

from shared import gcpauses, secretbox, tracing
from shared.logging import configure_logging, get_logger
from shared.settings import Settings

WorkerMain = Callable[[Settings, asyncio.Event], Awaitable[None]]


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    log = get_logger("runner")

    def _on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("second signal, exiting now", signal=sig.name)
            os._exit(128 + sig.value)
        log.info("stopping", signal=sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, sig)


def raise_open_file_limit() -> tuple[int, int]:
    """Soft open-file limit up to the hard one: a dispatcher keeps thousands of sockets
    open to slow targets, and the usual soft default (1,024) would refuse them (EMFILE)
    long before anything else runs out. Returns (soft, hard) as now set."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep what we have; the log line says how much that is
    return soft, hard


def refuse_to_start(name: str, reason: str) -> NoReturn:
    """A setting the service cannot run without: one line in the log, one on stderr, exit
    status 2, no traceback."""
    get_logger(name).error("refusing to start", reason=reason)
    print(f"{name}: {reason}", file=sys.stderr)
    raise SystemExit(2)


def check_secret_keys(name: str, settings: Settings) -> None:
    """Every service reads or writes subscription rows: without a usable encryption key
    (or plaintext allowed explicitly) none of them starts."""
    try:
        secretbox.keyring_for(settings)
    except secretbox.SecretBoxError as exc:
        refuse_to_start(name, str(exc))


def start_tracing(name: str) -> tracing.Tracing:
    """OpenTelemetry from the OTEL_* variables: on only with an exporter endpoint."""
    traces, off = tracing.setup(name)
    if off is None:
        get_logger("runner").info("tracing on")
    elif off != tracing.NO_ENDPOINT:
        # An endpoint is set, yet tracing is off: say why.
        get_logger("runner").warning("tracing off", reason=off)
    return traces


def start_service(name: str, settings: Settings) -> tracing.Tracing:
    """What every service does first: logging, timing its garbage collections, the secret
    keys check, tracing. The caller shuts the returned tracing down once everything else
    has stopped."""
    configure_logging(settings, service=name)
    gcpauses.watch()
    check_secret_keys(name, settings)
    return start_tracing(name)


def run_worker(name: str, settings: Settings, main: WorkerMain) -> None:
    traces = start_service(name, settings)
    soft, _ = raise_open_file_limit()

    async def _run() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        get_logger("runner").info("started", pid=os.getpid(), open_files=soft)
        await main(settings, stop)
        get_logger("runner").info("stopped")

    try:
        uvloop.run(_run())
    finally:
        traces.shutdown()
