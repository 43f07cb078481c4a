"""`python -m services.ingest`: the HTTP API on HOOKSTREAM_HTTP_HOST:HOOKSTREAM_HTTP_PORT."""

from __future__ import annotations

import uvicorn

from services.ingest.app import create_app
from services.ingest.auth import ConfigurationError
from services.ingest.server import uvicorn_config
from shared.logging import configure_logging
from shared.runner import check_secret_keys, refuse_to_start
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings, service="ingest")
    check_secret_keys("ingest", settings)
    try:
        app = create_app(settings)
    except ConfigurationError as exc:
        refuse_to_start("ingest", str(exc))
    config = uvicorn_config(
        app, settings.http_host, settings.http_port, max_head_bytes=settings.max_header_bytes
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
