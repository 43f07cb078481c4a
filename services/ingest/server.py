"""The uvicorn configuration ingest runs with (also used by the bench's baseline app)."""

from __future__ import annotations

from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadLimitProtocol(HttpToolsProtocol):
    """httptools with a bound on the request head, enforced while it streams in.

    httptools has no header limit and buffers a header line until it ends, so a client
    streaming one endless header grew ingest's memory without bound (64 MiB sent → +62 MB;
    the fault suite's hostile-input test). The ASGI-level 431 (HeaderLimitMiddleware) only
    runs once the head is complete; this answers 431 and closes as soon as the head read
    so far passes the limit. Bytes are counted after the parser has seen them, and only
    while it is still inside a head, so a body in the same read is never counted.
    """

    max_head_bytes = 16_384

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            body = b'{"detail":"request headers are larger than %d bytes"}' % self.max_head_bytes
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()


def head_limit_protocol(max_head_bytes: int) -> type[HeadLimitProtocol]:
    # Slack over the ASGI limit (which counts names + values only) for the request line
    # and the ": " and CRLF of each header, so the precise 431 comes from the middleware.
    limit = max_head_bytes + 8192
    return type("BoundedHeadProtocol", (HeadLimitProtocol,), {"max_head_bytes": limit})


def uvicorn_config(app: Any, host: str, port: int, max_head_bytes: int = 16_384) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=head_limit_protocol(max_head_bytes),
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=10,
    )
