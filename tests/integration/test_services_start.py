"""The four services start as `python -m services.<name>`, stay up, and stop cleanly on SIGTERM."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from tests.support.procs import ServiceProcess, free_port
from tests.support.stack import IsolatedStack


def test_four_services_run_and_stop_cleanly(stack: IsolatedStack, tmp_path: Path) -> None:
    port = free_port()
    procs = [
        ServiceProcess(stack, "ingest", log_dir=tmp_path, HOOKSTREAM_HTTP_PORT=str(port)),
        ServiceProcess(stack, "dispatcher", log_dir=tmp_path),
        ServiceProcess(stack, "retry_scheduler", log_dir=tmp_path),
        ServiceProcess(stack, "janitor", log_dir=tmp_path),
    ]
    try:
        deadline = time.monotonic() + 30
        health = None
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert health is not None, procs[0].log()
        assert health.status_code == 200
        ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"postgres": "ok", "redis": "ok", "kafka": "ok"}
        time.sleep(2)
        for p in procs:
            assert p.alive(), f"{p.name} exited early:\n{p.log()}"
    finally:
        codes = {p.name: p.stop() for p in procs}
    logs = {p.name: p.log() for p in procs}
    # uvicorn re-raises SIGTERM after its graceful shutdown, so ingest reports the signal;
    # the lifespan's "stopped" line proves resources were closed first.
    assert codes == {
        "ingest": -signal.SIGTERM,
        "dispatcher": 0,
        "retry_scheduler": 0,
        "janitor": 0,
    }, logs
    for name, text in logs.items():
        assert '"event": "stopped"' in text, f"{name} did not log a clean stop:\n{text[-2000:]}"
        assert "Traceback" not in text, text
