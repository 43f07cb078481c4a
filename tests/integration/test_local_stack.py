"""The stack script: idempotent start, clear message for a taken port, status."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.support.stack import ROOT

STACK = str(ROOT / "deploy/local/stack.sh")


def test_stack_up_twice_is_harmless_and_prints_urls() -> None:
    first = subprocess.run([STACK, "up"], capture_output=True, text=True, timeout=300)
    second = subprocess.run([STACK, "up"], capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "already running" in second.stderr
    for name in (
        "HOOKSTREAM_DATABASE_URL=",
        "HOOKSTREAM_REDIS_URL=",
        "HOOKSTREAM_KAFKA_BOOTSTRAP=",
    ):
        assert name in second.stdout
    status = subprocess.run([STACK, "status"], capture_output=True, text=True, timeout=30)
    assert status.returncode == 0
    assert status.stdout.count(" up ") == 3


def test_taken_port_gives_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = subprocess.run(
            [STACK, "up", "redis"],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOOKSTREAM_LOCAL_DIR": str(tmp_path),
                "HOOKSTREAM_REDIS_PORT": str(port),
            },
        )
    assert result.returncode != 0
    assert f"port {port}" in result.stderr
    assert "already taken" in result.stderr
    assert "HOOKSTREAM_REDIS_PORT" in result.stderr
    assert not (tmp_path / "redis" / "redis.pid").exists()
