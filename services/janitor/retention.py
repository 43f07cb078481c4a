"""Partition upkeep: create time partitions ahead of need. (Dropping comes with retention.)"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.settings import Settings

PARTITIONED_TABLES = ("events", "delivery_attempts")


async def ensure_partitions(engine: AsyncEngine, settings: Settings) -> dict[str, int]:
    """Create missing partitions from one width ago to ``partitions_ahead`` widths ahead."""
    width = settings.partition_width
    created: dict[str, int] = {}
    async with engine.begin() as conn:
        for table in PARTITIONED_TABLES:
            result = await conn.execute(
                text(
                    "SELECT hookstream_ensure_partitions(CAST(:t AS text), CAST(:w AS interval), "
                    "now() - CAST(:w AS interval), now() + CAST(:ahead AS interval))"
                ),
                {"t": table, "w": width, "ahead": width * settings.partitions_ahead},
            )
            created[table] = int(result.scalar_one())
    return created
