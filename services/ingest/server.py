"""The uvicorn configuration ingest runs with (also used by the bench's baseline app)."""

from __future__ import annotations

from typing import Any

import uvicorn


def uvicorn_config(app: Any, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=10,
    )
