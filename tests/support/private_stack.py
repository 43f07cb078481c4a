"""A private PostgreSQL + Redis + Kafka whose components a test may stop and start.

``PrivateStack`` runs ``deploy/local/stack.sh`` with ``HOOKSTREAM_LOCAL_DIR`` set to a
temporary directory and its own ports, so stopping its broker or database never touches
the shared stack other engineers' tests run on. Components are stopped by their own pid
file (Kafka, Redis) or ``pg_ctl -D <its data dir>`` (PostgreSQL), never by name. With
``brokers=3`` its Kafka is a 3-node cluster whose nodes a test may kill, stop and start
one at a time.

``PrivateNamespace`` is ``IsolatedStack`` pointed at a private stack: a fresh database
(built by Alembic) and topic prefix, with the environment services are started with.

Only loopback: every component binds 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from tests.support.procs import QUIET_PORTS, bindable, port_in
from tests.support.stack import DEV_KAFKA_DIR, ROOT, IsolatedStack

Component = Literal["postgres", "redis", "kafka"]

STACK_SH = ROOT / "deploy" / "local" / "stack.sh"
MAIN_KAFKA_LIBS = DEV_KAFKA_DIR / "libs"


def link_main_kafka_libs(local_dir: Path) -> None:
    """Reuse the main checkout's Kafka jars instead of fetching them again from Maven."""
    libs = local_dir / "kafka" / "libs"
    if not libs.exists():
        assert (MAIN_KAFKA_LIBS / ".complete").exists(), "run `make stack-up` first"
        libs.parent.mkdir(parents=True, exist_ok=True)
        libs.symlink_to(MAIN_KAFKA_LIBS, target_is_directory=True)


def run_stack_sh(local_dir: Path, ports: dict[str, int], *args: str) -> None:
    """``deploy/local/stack.sh <args>`` for a private stack under ``local_dir``."""
    # The private directory is what keeps `down` away from the shared stack's pid files.
    assert local_dir.resolve() != (ROOT / ".local").resolve()
    env = dict(os.environ)
    env["HOOKSTREAM_LOCAL_DIR"] = str(local_dir)
    # One node unless the caller says otherwise: `HOOKSTREAM_KAFKA_BROKERS=3 make test`
    # must not turn every private broker into a cluster on the shared cluster's ports.
    env["HOOKSTREAM_KAFKA_BROKERS"] = "1"
    env.update({name: str(port) for name, port in ports.items()})
    result = subprocess.run(
        [str(STACK_SH), *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    if result.returncode != 0:
        logs = [
            local_dir / "kafka" / "server.log",
            *sorted(local_dir.glob("kafka-cluster/*/server.log")),
        ]
        tail = "".join(
            f"{log}:\n{log.read_text(errors='replace')[-2000:]}\n" for log in logs if log.exists()
        )
        raise RuntimeError(f"stack.sh {' '.join(args)} failed:\n{result.stderr[-3000:]}\n{tail}")


PG_OS_USER = os.environ.get("HOOKSTREAM_PG_OS_USER", "hookstream-pg")


def quiet_port(taken: set[int]) -> int:
    """A free loopback port outside the ephemeral range, not in ``taken`` (see
    ``procs.QUIET_PORTS``: while a component is stopped, no client socket on this machine
    can be handed its port and keep it from starting again)."""
    return port_in(QUIET_PORTS, taken)


def quiet_ports(taken: set[int], count: int) -> int:
    """The first of ``count`` consecutive free quiet ports (a cluster's nodes)."""
    for _ in range(200):
        first = quiet_port(taken)
        rest = range(first + 1, first + count)
        if all(p in QUIET_PORTS and p not in taken and bindable(p) for p in rest):
            taken.update(rest)
            return first
    raise RuntimeError(
        f"no {count} consecutive free ports in {QUIET_PORTS.start}-{QUIET_PORTS.stop - 1}"
    )


def _pg_bin() -> Path:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True):
        return Path(candidate).parent
    found = shutil.which("pg_ctl")
    if found is None:
        raise RuntimeError("pg_ctl not found (PostgreSQL 15 server binaries)")
    return Path(found).resolve().parent


def _stopped(pid: int) -> bool:
    """True while ``pid`` is stopped by a signal (SIGSTOP)."""
    try:
        return "\nState:\tT" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


class PrivateStack:
    """stack.sh under ``local_dir`` on ports of its own."""

    def __init__(self, local_dir: Path, *, brokers: int = 1) -> None:
        assert local_dir.resolve() != (ROOT / ".local").resolve()
        self.local_dir = local_dir
        self.brokers = brokers
        taken: set[int] = set()
        self.pg_port = quiet_port(taken)
        self.redis_port = quiet_port(taken)
        self.kafka_port = quiet_port(taken)
        self.kafka_controller_port = quiet_port(taken)
        self.cluster_port = quiet_ports(taken, brokers)
        self.cluster_controller_port = quiet_ports(taken, brokers)
        self.database_url = f"postgresql+asyncpg://hookstream@127.0.0.1:{self.pg_port}/hookstream"
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        if brokers == 1:
            self.kafka_bootstrap = f"127.0.0.1:{self.kafka_port}"
        else:
            self.kafka_bootstrap = ",".join(f"127.0.0.1:{p}" for p in self.node_ports())

    # --- stack.sh -------------------------------------------------------------------

    def _ports(self) -> dict[str, int]:
        return {
            "HOOKSTREAM_PG_PORT": self.pg_port,
            "HOOKSTREAM_REDIS_PORT": self.redis_port,
            "HOOKSTREAM_KAFKA_PORT": self.kafka_port,
            "HOOKSTREAM_KAFKA_CONTROLLER_PORT": self.kafka_controller_port,
            "HOOKSTREAM_KAFKA_BROKERS": self.brokers,
            "HOOKSTREAM_KAFKA_CLUSTER_PORT": self.cluster_port,
            "HOOKSTREAM_KAFKA_CLUSTER_CONTROLLER_PORT": self.cluster_controller_port,
        }

    def _stack(self, *args: str) -> None:
        run_stack_sh(self.local_dir, self._ports(), *args)

    def up(self) -> None:
        """Every component. The Kafka jars are the main checkout's (no second download)."""
        link_main_kafka_libs(self.local_dir)
        self._stack("up")

    def down(self) -> None:
        self._stack("down")

    def start(self, component: Component) -> None:
        """Start one stopped component (stack.sh waits until it answers). For a cluster,
        every node that is not running (a node stopped by SIGSTOP counts as running)."""
        self._stack("up", component)

    # --- the nodes of a cluster (brokers > 1) -------------------------------------------

    def node_ports(self) -> list[int]:
        """Broker ports of nodes 1..N (node ids are 1-based; index 0 is node 1)."""
        return [self.cluster_port + i for i in range(self.brokers)]

    def node_pid(self, node: int) -> int | None:
        pid_file = self.local_dir / "kafka-cluster" / f"node-{node}" / "kafka.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def signal_node(self, node: int, sig: signal.Signals) -> int:
        """Send ``sig`` to node ``node``'s process; returns its pid."""
        pid = self.node_pid(node)
        assert pid is not None, f"kafka node {node} is not running"
        os.kill(pid, sig)
        return pid

    def end_node(self, node: int, sig: signal.Signals, *, timeout: float = 60) -> None:
        """SIGKILL or SIGTERM node ``node`` and return once its process is gone."""
        pid = self.signal_node(node, sig)
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
            time.sleep(0.05)

    def heal(self) -> None:
        """Every node running and not stopped: what a scenario that failed half-way left."""
        for node in range(1, self.brokers + 1):
            pid = self.node_pid(node)
            if pid is not None and _stopped(pid):
                os.kill(pid, signal.SIGCONT)
        if not self.running("kafka"):
            self.start("kafka")

    # --- stopping one component -----------------------------------------------------

    def stop(self, component: Component, *, timeout: float = 60) -> None:
        """Stop one component and return once its process is gone."""
        if component == "postgres":
            self._pg_ctl("-m", "fast", "-w", "-t", str(int(timeout)), "stop")
            return
        pid_file = {
            "kafka": self.local_dir / "kafka" / "kafka.pid",
            "redis": self.local_dir / "redis" / "redis.pid",
        }[component]
        pid = int(pid_file.read_text().split()[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
            time.sleep(0.1)
        pid_file.unlink(missing_ok=True)

    def running(self, component: Component) -> bool:
        if component == "kafka" and self.brokers > 1:
            return all(self.node_pid(n) is not None for n in range(1, self.brokers + 1))
        if component == "postgres":
            pid_file = self.local_dir / "pg" / "data" / "postmaster.pid"
        else:
            pid_file = self.local_dir / component / f"{component}.pid"
        try:
            return _alive(int(pid_file.read_text().split()[0]))
        except (OSError, ValueError):
            return False

    def _pg_ctl(self, *args: str) -> None:
        command = [str(_pg_bin() / "pg_ctl"), "-D", str(self.local_dir / "pg" / "data"), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", PG_OS_USER, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def private_stack(*, brokers: int = 1) -> Iterator[PrivateStack]:
    """A private stack in a fresh directory under /tmp, removed afterwards."""
    # Not pytest's tmp_path: its parents are 0700, and PostgreSQL runs as another user.
    local_dir = Path(tempfile.mkdtemp(prefix="hookstream-private-"))
    local_dir.chmod(0o755)
    stack = PrivateStack(local_dir, brokers=brokers)
    try:
        stack.up()
        yield stack
    finally:
        try:
            stack.down()
        finally:
            shutil.rmtree(local_dir, ignore_errors=True)


class PrivateNamespace(IsolatedStack):
    """A fresh database and topic prefix on a ``PrivateStack`` (not the shared one)."""

    def __init__(self, private: PrivateStack) -> None:
        super().__init__()
        self.private = private
        self.database_url = private.database_url.rsplit("/", 1)[0] + "/" + self.db_name
        self._base_url = private.database_url
        self.env.update(
            HOOKSTREAM_DATABASE_URL=self.database_url,
            HOOKSTREAM_REDIS_URL=private.redis_url,
            HOOKSTREAM_KAFKA_BOOTSTRAP=private.kafka_bootstrap,
        )

    @property
    def dsn(self) -> str:
        """The database URL as asyncpg.connect() takes it."""
        return self.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
