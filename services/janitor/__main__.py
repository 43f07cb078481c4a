"""`python -m services.janitor [--once]`: periodic housekeeping."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from services.janitor.retention import ensure_partitions
from shared.db import make_engine
from shared.logging import get_logger
from shared.runner import run_worker
from shared.settings import Settings

log = get_logger("janitor")


async def run(settings: Settings, stop: asyncio.Event, *, once: bool = False) -> None:
    engine = make_engine(settings, pool_size=1)
    try:
        while True:
            created = await ensure_partitions(engine, settings)
            log.info("partitions ensured", created=created)
            if once:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.janitor_interval.total_seconds())
            if stop.is_set():
                return
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.janitor")
    parser.add_argument("--once", action="store_true", help="run one pass and exit")
    args = parser.parse_args()

    async def _main(settings: Settings, stop: asyncio.Event) -> None:
        await run(settings, stop, once=args.once)

    run_worker("janitor", Settings(), _main)


if __name__ == "__main__":
    main()
