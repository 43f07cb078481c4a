"""Run services as real processes (python -m services.<name>) with the test stack's settings."""

from __future__ import annotations

import random
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

# Ports below Linux's ephemeral range (32768-60999) are never handed to a client socket,
# so a port picked there stays free until its server binds it, or binds it again after a
# restart. A port found by binding port 0 is an ephemeral one: until the child bound it (a
# second or so of start-up) any process's outgoing connection could be given it, and a
# dispatcher's metrics server failed so with "Address already in use" in ``bench
# targets``, whose runs open thousands of connections each. Private stacks' components
# take their ports from QUIET_PORTS, child servers from CHILD_PORTS: the two never meet.
QUIET_PORTS = range(21000, 30000)
CHILD_PORTS = range(30000, 32768)
_children: set[int] = set()


def bindable(port: int) -> bool:
    """Nothing holds ``port`` on loopback (no SO_REUSEADDR: TIME_WAIT counts as held)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_in(ports: range, taken: set[int]) -> int:
    """A free loopback port from ``ports``, not in ``taken``; added to ``taken``."""
    for _ in range(200):
        port = random.choice(ports)
        if port not in taken and bindable(port):
            taken.add(port)
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


def free_port() -> int:
    """A loopback port for a child server to bind, never the same one twice in one
    process; an ephemeral one (port 0's) only once CHILD_PORTS has none left."""
    try:
        return port_in(CHILD_PORTS, _children)
    except RuntimeError:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _children:
                _children.add(port)
                return port


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
