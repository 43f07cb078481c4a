"""`python -m services.retry_scheduler`: re-publishes due retries from the tier topics."""

from __future__ import annotations

import asyncio

from services.retry_scheduler.scheduler import run
from services.retry_scheduler.settings import SchedulerSettings
from shared.runner import run_worker
from shared.settings import Settings


def main() -> None:
    config = SchedulerSettings()

    async def _main(settings: Settings, stop: asyncio.Event) -> None:
        await run(settings, stop, config)

    run_worker("retry_scheduler", Settings(), _main)


if __name__ == "__main__":
    main()
