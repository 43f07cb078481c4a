#!/usr/bin/env python3
"""Container health check for every Hookstream service (the image's HEALTHCHECK).

    healthcheck.py          decide from the service this container runs (below)
    healthcheck.py URL      GET an http:// URL; healthy on a 2xx answer

Exit 0 = healthy, 1 = unhealthy (Docker reserves 2). One line on stdout says why; Docker
keeps it in `docker inspect --format '{{json .State.Health}}'`.

What "healthy" means here, and what it does not:

- ingest: ``GET /health`` on ``HOOKSTREAM_HTTP_PORT`` answers 2xx, so uvicorn's event loop
  serves requests. It does not say PostgreSQL, Redis or Kafka answer: that is ``/ready``,
  and failing the container on a dependency blip would only restart a healthy process.
- a worker (dispatcher, retry_scheduler, janitor) with ``HOOKSTREAM_METRICS_PORT`` set:
  ``GET /metrics`` on ``127.0.0.1:<port>`` answers 2xx. prometheus-client serves it from
  its own thread, so this proves the process is up and not wedged holding the GIL; it
  does not prove the asyncio loop is making progress (watch consumer lag for that).
- a worker without a metrics port: its process exists and is neither a zombie nor
  stopped. A restart policy already covers a process that exits, so this adds little;
  set ``HOOKSTREAM_METRICS_PORT`` (docker-compose.yml does) for a real probe.
- the one-shot jobs (migrate, topics) are healthy while they run.

Standard library only, no Hookstream import: a health check must answer within its
timeout even when the application's imports are what is broken.
"""

from __future__ import annotations

import http.client
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

WORKERS = ("dispatcher", "retry_scheduler", "janitor")
SERVICES = ("ingest", *WORKERS)
# Docker's default timeout is 30 s and the image sets 5 s; answer well inside it.
TIMEOUT_S = 3.0
DEFAULT_HTTP_PORT = 8000  # shared.settings.Settings.http_port; a test keeps them equal


def http_ok(url: str, timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    """GET ``url`` (http only); healthy on a 2xx status."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return False, f"not an http:// URL: {url!r}"
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        status = conn.getresponse().status
    except OSError as exc:
        return False, f"GET {url}: {type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return 200 <= status < 300, f"GET {url}: HTTP {status}"


def read_argv(proc: Path, pid: int) -> list[str]:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def role_of(argv: Sequence[str]) -> str | None:
    """The Hookstream role a command line runs, or None."""
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m":
            module = argv[i + 1]
            if module == "shared.topics":
                return "topics"
            name = module.removeprefix("services.")
            if name != module and name in SERVICES:
                return name
    if any(Path(arg).name == "alembic" for arg in argv[:2]):
        return "migrate"
    return None


def find_role(proc: Path) -> tuple[int, str] | None:
    """The first process (lowest pid) running a Hookstream role, as ``(pid, role)``.

    Scans /proc rather than trusting pid 1, so the check also works under an init
    (``docker run --init``, compose ``init: true``).
    """
    pids = sorted(int(p.name) for p in proc.iterdir() if p.name.isdigit())
    for pid in pids:
        role = role_of(read_argv(proc, pid))
        if role is not None:
            return pid, role
    return None


def process_state(proc: Path, pid: int) -> str:
    """The state letter of /proc/<pid>/stat (R, S, D, Z, T, ...), or "" if it is gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) is in parentheses and may itself contain spaces.
    return stat.rpartition(")")[2].split()[0]


def check(
    argv: Sequence[str], env: Mapping[str, str], proc: Path = Path("/proc")
) -> tuple[bool, str]:
    if argv:
        return http_ok(argv[0])
    found = find_role(proc)
    if found is None:
        return False, "no Hookstream service process in this container"
    pid, role = found
    if role in ("migrate", "topics"):
        return True, f"one-shot job {role} running (pid {pid})"
    if role == "ingest":
        port = env.get("HOOKSTREAM_HTTP_PORT") or str(DEFAULT_HTTP_PORT)
        return http_ok(f"http://127.0.0.1:{port}/health")
    metrics_port = env.get("HOOKSTREAM_METRICS_PORT", "")
    # Port 0 asks for an ephemeral port, which this check cannot know.
    if metrics_port not in ("", "0"):
        return http_ok(f"http://127.0.0.1:{metrics_port}/metrics")
    state = process_state(proc, pid)
    if state in ("", "Z", "X", "T", "t"):
        return False, f"{role} (pid {pid}) is not running: state {state or 'gone'!r}"
    return True, f"{role} (pid {pid}) alive, state {state}; no metrics port to probe"


def main() -> int:
    ok, reason = check(sys.argv[1:], os.environ)
    print(reason)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
