"""`python -m services.ingest`: the HTTP API on HOOKSTREAM_HTTP_HOST:HOOKSTREAM_HTTP_PORT."""

from __future__ import annotations

import uvicorn

from services.ingest.app import create_app
from shared.logging import configure_logging
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings, service="ingest")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
