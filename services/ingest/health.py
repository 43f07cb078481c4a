"""Liveness and readiness. /ready names the dependency that is down."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from services.ingest.resources import Resources, from_request

router = APIRouter(tags=["health"])

_CHECK_TIMEOUT = 2.0


@router.get("/health", summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


async def _check_postgres(res: Resources) -> None:
    async with res.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _check_redis(res: Resources) -> None:
    await res.redis.ping()


async def _check_kafka(res: Resources) -> None:
    await res.producer.client.fetch_all_metadata()


@router.get(
    "/ready",
    summary="Readiness: PostgreSQL, Redis and Kafka answer",
    responses={503: {"description": "a dependency is down; the body says which"}},
)
async def ready(request: Request) -> Any:
    res = from_request(request)
    checks = {"postgres": _check_postgres, "redis": _check_redis, "kafka": _check_kafka}
    results = await asyncio.gather(
        *(asyncio.wait_for(check(res), _CHECK_TIMEOUT) for check in checks.values()),
        return_exceptions=True,
    )
    status = {
        name: "ok" if not isinstance(r, BaseException) else f"down: {type(r).__name__}"
        for name, r in zip(checks, results, strict=True)
    }
    ok = all(v == "ok" for v in status.values())
    return JSONResponse(
        {"status": "ready" if ok else "not ready", "checks": status}, status_code=200 if ok else 503
    )
