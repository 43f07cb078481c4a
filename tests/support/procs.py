"""Run services as real processes (python -m services.<name>) with the test stack's settings."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from tests.support.stack import ROOT, IsolatedStack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """``python -m services.<name>``; with ``launcher`` (a module and its arguments, e.g.
    ``("bench.stalls", "probe", "--port", "8123")``), ``python -m <launcher...>
    services.<name>``: a wrapper that runs the service in its own process."""

    def __init__(
        self,
        stack: IsolatedStack,
        name: str,
        *args: str,
        log_dir: Path,
        launcher: Sequence[str] = (),
        **env: str,
    ):
        self.name = name
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *launcher, f"services.{name}", *args],
            cwd=ROOT,
            env=stack.process_env(**env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextmanager
def running_service(
    stack: IsolatedStack, name: str, log_dir: Path, **env: str
) -> Iterator[ServiceProcess]:
    """A service process for the block; it must then stop cleanly (exit 0, no traceback)."""
    proc = ServiceProcess(stack, name, log_dir=log_dir, **env)
    try:
        yield proc
    finally:
        code = proc.stop()
    log = proc.log()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


class ChildServer:
    """A helper server run as a child process (sink, target farm): a context manager that
    stops it, and kills it if it does not stop within 10 s."""

    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
