"""The targets bench's farm answers like the endpoints it stands for: after its drawn
delay, a hang after the hang's delay, in order on a keep-alive connection, and counts
what it saw. The bench's figures (hangs recorded as failed attempts, requests beyond
the attempt rows, connections per request) are read from these counts."""

from __future__ import annotations

import socket
import time

from tests.support.rawhttp import raw_exchange, status_of
from tests.support.target_farm import TargetFarm


def _request(webhook_id: str, body: bytes = b"{}") -> bytes:
    return (
        b"POST /hook HTTP/1.1\r\nhost: 127.0.0.1\r\nwebhook-id: %s\r\n"
        b"content-length: %d\r\n\r\n%s" % (webhook_id.encode(), len(body), body)
    )


def _answers(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` whole answers (each a 2-byte body) read from ``sock``."""
    data = b""
    while data.count(b"\r\n\r\nok") < count:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return [b"HTTP/1.1" + a for a in data.split(b"HTTP/1.1")[1:]]


def test_slow_answers_come_after_their_delay_in_order_on_one_connection() -> None:
    with TargetFarm(2, median_ms=80, sigma=0.3) as farm:
        with socket.create_connection(("127.0.0.1", farm.ports[0]), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(_request("msg_1"))
            assert [status_of(a) for a in _answers(sock, 1)] == [200]
            assert time.monotonic() - started > 0.02  # e^(-3 sigma) of 80 ms is 33 ms
            # Two requests at once on the connection: two answers, in their order.
            sock.sendall(_request("msg_2", b"x" * 70_000) + _request("msg_3"))
            assert [status_of(a) for a in _answers(sock, 2)] == [200, 200]
        stats = farm.stats()
        assert (stats["requests"], stats["unique"], stats["hung"]) == (3, 3, 0)
        assert stats["connections"] == 1
        assert stats["open"] == 0
        assert sorted(farm.arrivals()) == ["msg_1", "msg_2", "msg_3"]


def test_a_hang_answers_after_the_hang_and_counts_as_open_meanwhile() -> None:
    with TargetFarm(1, median_ms=10, hang_fraction=1.0, hang_ms=400) as farm:
        with socket.create_connection(("127.0.0.1", farm.ports[0]), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(_request("msg_hung"))
            time.sleep(0.1)
            assert farm.stats()["open"] == 1
            assert [status_of(a) for a in _answers(sock, 1)] == [200]
            # The farm's timer has the event loop's millisecond resolution.
            assert time.monotonic() - started >= 0.39
        stats = farm.stats()
        assert (stats["hung"], stats["open"], stats["most_open"]) == (1, 0, 1)
        assert farm.arrivals()["msg_hung"][0][1] is True


def test_a_request_without_a_length_it_can_frame_is_refused() -> None:
    with TargetFarm(1) as farm:
        answer = raw_exchange(
            farm.ports[0], b"POST /hook HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        assert status_of(answer) == 400
        answer = raw_exchange(farm.ports[0], b"POST /hook HTTP/1.1\r\ncontent-length: x\r\n\r\n")
        assert status_of(answer) == 400
        assert farm.stats()["requests"] == 0
