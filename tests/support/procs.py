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

_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (and to port 0)."""
    try:
        return int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port nothing uses, for a child server to bind; never the same one twice
    in one process.

    Taken from the 12,000 ports below the kernel's ephemeral range when there is room. A
    port found by binding port 0 is an ephemeral one, and until the child binds it (a
    second or so of start-up) any process's outgoing connection may be given it as its
    local port: a dispatcher's metrics server failed so with "Address already in use" in
    ``bench targets``, whose runs open thousands of connections each."""
    low = ephemeral_low()
    if low - 1024 >= 4096:
        for _ in range(64):
            port = random.randrange(max(1024, low - 12_000), low)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _bindable(port: int) -> bool:
    # No SO_REUSEADDR: a port still in TIME_WAIT counts as taken.
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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
