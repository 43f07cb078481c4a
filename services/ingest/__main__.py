"""`python -m services.ingest`: the HTTP API on HOOKSTREAM_HTTP_HOST:HOOKSTREAM_HTTP_PORT."""

from __future__ import annotations

import sys

import uvicorn

from services.ingest.app import create_app
from services.ingest.auth import ConfigurationError
from services.ingest.server import uvicorn_config
from shared.logging import configure_logging, get_logger
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings, service="ingest")
    try:
        app = create_app(settings)
    except ConfigurationError as exc:
        get_logger("ingest").error("refusing to start", reason=str(exc))
        print(f"ingest: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    config = uvicorn_config(
        app, settings.http_host, settings.http_port, max_head_bytes=settings.max_header_bytes
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
