"""deploy/docker/healthcheck.py against real local HTTP servers and a fake /proc."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

from shared.settings import Settings
from tests.support.procs import free_port

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "healthcheck.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hookstream_healthcheck", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hc = _load()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path in ("/health", "/metrics") else 500
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def fake_proc(root: Path, processes: dict[int, tuple[list[str], str]]) -> Path:
    """A /proc with ``{pid: (argv, state)}``."""
    for pid, (argv, state) in processes.items():
        d = root / str(pid)
        d.mkdir(parents=True)
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        (d / "stat").write_text(f"{pid} (py thon) {state} 0 {pid} {pid} 0 -1\n")
    (root / "self").mkdir(exist_ok=True)  # non-numeric entries are ignored
    return root


def test_default_port_matches_settings() -> None:
    assert Settings.model_fields["http_port"].default == hc.DEFAULT_HTTP_PORT


def test_http_ok(server: int) -> None:
    assert hc.http_ok(f"http://127.0.0.1:{server}/health") == (
        True,
        f"GET http://127.0.0.1:{server}/health: HTTP 200",
    )
    assert hc.http_ok(f"http://127.0.0.1:{server}/broken")[0] is False
    ok, reason = hc.http_ok(f"http://127.0.0.1:{free_port()}/health", timeout=1)
    assert not ok
    assert "ConnectionRefusedError" in reason
    assert hc.http_ok("https://127.0.0.1/health")[0] is False
    assert hc.http_ok("file:///etc/passwd")[0] is False


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["/opt/venv/bin/python", "-m", "services.ingest"], "ingest"),
        (["python", "-m", "services.retry_scheduler"], "retry_scheduler"),
        (["python", "-m", "services.janitor", "--once"], "janitor"),
        (["python", "-m", "shared.topics"], "topics"),
        (["/opt/venv/bin/python", "/opt/venv/bin/alembic", "-c", "a.ini", "upgrade"], "migrate"),
        (["python", "-m", "services.nothing"], None),
        (["python", "/app/deploy/docker/healthcheck.py"], None),
        (["/sbin/docker-init", "--", "/app/deploy/docker/entrypoint.sh", "ingest"], None),
        ([], None),
    ],
)
def test_role_of(argv: list[str], role: str | None) -> None:
    assert hc.role_of(argv) == role


def test_ingest_is_probed_on_its_port(tmp_path: Path, server: int) -> None:
    proc = fake_proc(tmp_path, {1: (["python", "-m", "services.ingest"], "S")})
    ok, reason = hc.check([], {"HOOKSTREAM_HTTP_PORT": str(server)}, proc)
    assert ok, reason
    assert f":{server}/health" in reason
    ok, _ = hc.check([], {"HOOKSTREAM_HTTP_PORT": str(free_port())}, proc)
    assert not ok


def test_ingest_found_under_an_init(tmp_path: Path, server: int) -> None:
    proc = fake_proc(
        tmp_path,
        {
            1: (["/sbin/docker-init", "--", "/app/deploy/docker/entrypoint.sh", "ingest"], "S"),
            7: (["/opt/venv/bin/python", "-m", "services.ingest"], "S"),
        },
    )
    assert hc.check([], {"HOOKSTREAM_HTTP_PORT": str(server)}, proc)[0]


def test_worker_with_metrics_port_is_probed(tmp_path: Path, server: int) -> None:
    proc = fake_proc(tmp_path, {1: (["python", "-m", "services.dispatcher"], "S")})
    ok, reason = hc.check([], {"HOOKSTREAM_METRICS_PORT": str(server)}, proc)
    assert ok, reason
    assert reason.endswith("/metrics: HTTP 200")
    # A metrics port that does not answer is unhealthy, whatever the process state.
    assert not hc.check([], {"HOOKSTREAM_METRICS_PORT": str(free_port())}, proc)[0]


@pytest.mark.parametrize(
    ("state", "healthy"),
    [("R", True), ("S", True), ("D", True), ("Z", False), ("T", False), ("X", False)],
)
def test_worker_without_metrics_port_is_a_liveness_check(
    tmp_path: Path, state: str, healthy: bool
) -> None:
    proc = fake_proc(tmp_path, {1: (["python", "-m", "services.janitor"], state)})
    ok, reason = hc.check([], {"HOOKSTREAM_METRICS_PORT": "0"}, proc)
    assert ok is healthy, reason
    if healthy:
        assert "no metrics port" in reason


def test_one_shot_jobs_are_healthy_while_running(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {1: (["python", "/opt/venv/bin/alembic", "upgrade"], "R")})
    assert hc.check([], {}, proc) == (True, "one-shot job migrate running (pid 1)")


def test_no_service_is_unhealthy(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {1: (["sleep", "infinity"], "S")})
    assert hc.check([], {}, proc) == (False, "no Hookstream service process in this container")


def test_real_proc_is_readable() -> None:
    """On Linux the scan runs over the real /proc without error (and finds no service
    unless one runs here)."""
    found = hc.find_role(Path("/proc"))
    assert found is None or found[1] in (*hc.SERVICES, "migrate", "topics")


def test_command_line_exit_codes(server: int) -> None:
    def status(url: str) -> int:
        return subprocess.run(
            [sys.executable, str(SCRIPT), url], capture_output=True, timeout=10
        ).returncode

    assert status(f"http://127.0.0.1:{server}/health") == 0
    assert status(f"http://127.0.0.1:{server}/nope") == 1
    assert status(f"http://127.0.0.1:{free_port()}/health") == 1
