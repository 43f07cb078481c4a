"""HTTP/1.1 over a bare socket, for requests an HTTP client would refuse to send (header
bytes that are not ASCII, odd Content-Length values, heads of many megabytes), and the
head parsing that the bare client and sink of the benches share."""

from __future__ import annotations

import contextlib
import socket


def raw_exchange(port: int, request: bytes, timeout: float = 30) -> bytes:
    """Send ``request`` to 127.0.0.1:``port`` as is, read until the server closes; b"" if
    it hung up without a word."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # Refused mid-request: what it answered (if anything) is still readable.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return answer
            if not chunk:
                return answer
            answer += chunk


def status_of(answer: bytes) -> int | None:
    """The status code of a raw HTTP/1.1 answer, None when there was none."""
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer.split(b" ", 2)[1])


def head_fields(head: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """The start line of an HTTP/1.1 head (without its blank line) and its header fields,
    names lower-cased, values stripped."""
    start, *lines = head.split(b"\r\n")
    fields = {}
    for line in lines:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return start, fields
