"""`python -m services.ingest`: the HTTP API on HOOKSTREAM_HTTP_HOST:HOOKSTREAM_HTTP_PORT."""

from __future__ import annotations

import uvicorn

from services.ingest.app import create_app
from services.ingest.auth import ConfigurationError
from services.ingest.server import uvicorn_config
from shared.runner import refuse_to_start, start_service
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    traces = start_service("ingest", settings)
    try:
        app = create_app(settings, traces)
    except ConfigurationError as exc:
        refuse_to_start("ingest", str(exc))
    config = uvicorn_config(
        app, settings.http_host, settings.http_port, max_head_bytes=settings.max_header_bytes
    )
    try:
        uvicorn.Server(config).run()
    finally:
        traces.shutdown()


if __name__ == "__main__":
    main()
