"""The benchmarks' recording sink answers and records the same in both of its forms
(aiohttp, and the bare protocol the latency bench uses): what the benches count comes
from here, so a sink that dropped or doubled an arrival would skew every figure."""

from __future__ import annotations

import http.client

import pytest

from tests.support.targets import SinkProcess


def _post(conn: http.client.HTTPConnection, path: str, webhook_id: str, body: bytes) -> int:
    conn.request("POST", path, body=body, headers={"webhook-id": webhook_id})
    resp = conn.getresponse()
    assert resp.read() == b"ok"
    return resp.status


@pytest.mark.parametrize("bare", [False, True], ids=["aiohttp", "bare"])
def test_sink_records_every_arrival_by_webhook_id(bare: bool) -> None:
    with SinkProcess(bare=bare) as sink:
        # One keep-alive connection: the bare sink must frame each request by its length.
        conn = http.client.HTTPConnection("127.0.0.1", sink.port, timeout=10)
        try:
            assert _post(conn, "/a", "msg_1", b'{"n": 1}') == 200
            assert _post(conn, "/b", "msg_2", b"x" * 70_000) == 200
            assert _post(conn, "/a", "msg_1", b"") == 200
        finally:
            conn.close()
        stats = sink.stats()
        assert (stats["requests"], stats["unique"]) == (3, 2)
        arrivals = sink.arrivals()
        assert sorted(arrivals) == ["msg_1", "msg_2"]
        assert len(arrivals["msg_1"]) == 2
        assert arrivals["msg_1"][0] <= arrivals["msg_1"][1]
        sink.reset()
        assert sink.stats()["requests"] == 0
        assert sink.arrivals() == {}
