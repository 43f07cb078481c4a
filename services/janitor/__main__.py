"""`python -m services.janitor [--once]`: periodic housekeeping, and backfills.

Every ``janitor_interval`` (default 5 min) one pass: drop expired partitions, create the
next ones, empty the DEFAULT partitions, count Redis keys. ``--once`` runs one pass and
exits 0, or non-zero when the pass failed (`make run` relies on it before starting).
Between passes (not with ``--once``) the backfill worker runs what
``POST /subscriptions/{id}/backfill`` asked for (``backfill.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable
from contextlib import AsyncExitStack

from services.janitor.backfill import running_backfills
from services.janitor.housekeeping import JanitorReport, run_once
from shared.db import make_engine
from shared.logging import get_logger
from shared.metrics import serve_metrics
from shared.redis import make_redis
from shared.runner import run_worker
from shared.settings import Settings

log = get_logger("janitor")


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    once: bool = False,
    on_report: Callable[[JanitorReport], None] | None = None,
) -> None:
    async with AsyncExitStack() as resources:
        # One connection does the whole pass (it holds the session advisory lock); the
        # overflow connection serves pool_pre_ping after a database restart.
        engine = make_engine(settings, pool_size=1)
        resources.push_async_callback(engine.dispose)
        redis = make_redis(settings)
        resources.push_async_callback(redis.aclose)
        if not once:
            await resources.enter_async_context(running_backfills(settings, stop))
        while True:
            try:
                report = await run_once(engine, redis, settings)
            except Exception:
                if once:
                    raise
                # A database blip must not end the loop: the next pass retries.
                log.exception("janitor run failed")
            else:
                if report.skipped:
                    log.info(
                        "janitor run skipped",
                        skipped=True,
                        reason="another janitor holds the advisory lock",
                    )
                else:
                    log.info("janitor run", **report.as_dict())
                if on_report is not None:
                    on_report(report)
            if once:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.janitor_interval.total_seconds())
            if stop.is_set():
                return


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.janitor")
    parser.add_argument("--once", action="store_true", help="run one pass and exit")
    args = parser.parse_args()

    async def _main(settings: Settings, stop: asyncio.Event) -> None:
        if not args.once:
            serve_metrics(settings.metrics_port, settings.metrics_host)
        await run(settings, stop, once=args.once)

    run_worker("janitor", Settings(), _main)


if __name__ == "__main__":
    main()
