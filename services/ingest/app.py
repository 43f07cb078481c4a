"""The ingest app factory: HTTP API, management, status and metrics in one FastAPI app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI

from services.ingest import health
from services.ingest.resources import Resources, open_resources
from shared import __version__
from shared.logging import get_logger
from shared.settings import Settings


class State(TypedDict):
    resources: Resources


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        log = get_logger("ingest")
        async with open_resources(settings) as resources:
            log.info("started", host=settings.http_host, port=settings.http_port)
            yield {"resources": resources}
        log.info("stopped")

    app = FastAPI(
        title="Hookstream",
        version=__version__,
        description="Webhook delivery: signed ingestion, durable fan-out, retries, status.",
        lifespan=lifespan,
    )
    app.include_router(health.router)
    return app
