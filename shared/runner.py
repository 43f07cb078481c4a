"""Service runner: uvloop, signals, and the stop event every worker loop watches.

A worker service's ``__main__`` does::

    settings = Settings()
    run_worker("dispatcher", settings, main)   # main(settings, stop: asyncio.Event)

SIGTERM/SIGINT set ``stop``; the worker then stops fetching, drains in-flight work within
its deadline, commits and closes its resources in reverse order (an AsyncExitStack).
A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable

import uvloop

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


def run_worker(name: str, settings: Settings, main: WorkerMain) -> None:
    configure_logging(settings, service=name)

    async def _run() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        get_logger("runner").info("started", pid=os.getpid())
        await main(settings, stop)
        get_logger("runner").info("stopped")

    uvloop.run(_run())
