"""deploy/docker/entrypoint.sh: parsed for its arms, and run with stub commands."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy import entrypoint as ep

SERVICES = ("ingest", "dispatcher", "retry_scheduler", "janitor")
# dash is the image's /bin/sh (Debian) and rejects bashisms; bash for those who run it by hand.
SHELLS = [s for s in ("dash", "bash") if shutil.which(s)]


@pytest.fixture(scope="module")
def arms() -> dict[str, str]:
    return ep.case_arms(ep.ENTRYPOINT.read_text())


@pytest.fixture
def stub_bin(tmp_path: Path) -> Path:
    """`python` and `alembic` that print how they were called and their pid."""
    for name in ("python", "alembic"):
        stub = tmp_path / name
        stub.write_text(f'#!/bin/sh\necho "pid=$$ {name} $*"\n')
        stub.chmod(0o755)
    return tmp_path


def run(stub_bin: Path, *args: str, shell: str = "sh") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{stub_bin}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [shell, str(ep.ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=10
    )


def test_script_is_executable_posix_sh() -> None:
    assert os.access(ep.ENTRYPOINT, os.X_OK), "COPY keeps the mode; the image runs it directly"
    assert ep.ENTRYPOINT.read_text().startswith("#!/bin/sh\n")


@pytest.mark.parametrize("shell", SHELLS)
def test_script_parses(shell: str) -> None:
    subprocess.run([shell, "-n", str(ep.ENTRYPOINT)], check=True, timeout=10)


def test_arms_cover_every_role(arms: dict[str, str]) -> None:
    assert ep.service_names(arms) == {*SERVICES, "migrate", "topics"}
    assert "*" in arms, "an unknown name must reach a catch-all that fails"


def test_each_service_arm_runs_a_module_that_exists(arms: dict[str, str]) -> None:
    for name in SERVICES:
        module = ep.module_run_by(arms[name], name)
        assert module == f"services.{name}"
        assert ep.module_file(module) == ep.ROOT / "services" / name / "__main__.py"
    assert ep.module_run_by(arms["topics"], "topics") == "shared.topics"
    assert ep.module_file("shared.topics") == ep.ROOT / "shared" / "topics.py"
    assert "alembic" in arms["migrate"]
    assert "upgrade head" in arms["migrate"]


def test_every_service_in_code_has_an_arm(arms: dict[str, str]) -> None:
    in_code = {p.parent.name for p in (ep.ROOT / "services").glob("*/__main__.py")}
    missing = sorted(in_code - ep.service_names(arms))
    assert missing == [], "add them to the first arm of deploy/docker/entrypoint.sh"


@pytest.mark.parametrize("name", SERVICES)
def test_service_runs_its_module_in_place_of_the_shell(stub_bin: Path, name: str) -> None:
    env = {**os.environ, "PATH": f"{stub_bin}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        ["sh", str(ep.ENTRYPOINT), name], env=env, stdout=subprocess.PIPE, text=True
    )
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    # Same pid as the shell we started: `exec`, so SIGTERM reaches the service itself.
    assert out.strip() == f"pid={proc.pid} python -m services.{name}"


def test_arguments_pass_through_to_a_service(stub_bin: Path) -> None:
    result = run(stub_bin, "janitor", "--once")
    assert result.returncode == 0
    assert result.stdout.split(" ", 1)[1].strip() == "python -m services.janitor --once"


def test_migrate_upgrades_to_head(stub_bin: Path) -> None:
    result = run(stub_bin, "migrate")
    assert result.returncode == 0, result.stderr
    expected = f"alembic -c {ep.ROOT / 'alembic.ini'} upgrade head"
    assert result.stdout.split(" ", 1)[1].strip() == expected


def test_topics_creates_topics(stub_bin: Path) -> None:
    result = run(stub_bin, "topics")
    assert result.returncode == 0
    assert result.stdout.split(" ", 1)[1].strip() == "python -m shared.topics"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["worker"], "unknown service 'worker'"),
        (["services.ingest"], "unknown service"),
        (["INGEST"], "unknown service"),
        ([""], "unknown service"),
        ([], "no service named"),
        (["migrate", "downgrade"], "migrate takes no arguments"),
        (["topics", "--delete"], "topics takes no arguments"),
    ],
)
def test_bad_invocations_exit_2_with_a_clear_error(
    stub_bin: Path, args: list[str], message: str
) -> None:
    result = run(stub_bin, *args)
    assert result.returncode == 2
    assert result.stdout == "", "nothing ran"
    assert message in result.stderr
    assert "usage: entrypoint.sh {ingest|dispatcher|retry_scheduler|janitor|migrate|topics}" in (
        result.stderr
    )


def test_help(stub_bin: Path) -> None:
    result = run(stub_bin, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage:")


@pytest.mark.parametrize("shell", SHELLS)
def test_same_behaviour_in_every_shell(stub_bin: Path, shell: str) -> None:
    assert run(stub_bin, "dispatcher", shell=shell).stdout.endswith("services.dispatcher\n")
    assert run(stub_bin, "nope", shell=shell).returncode == 2


def test_arm_parser_reads_alternatives_and_bodies() -> None:
    text = 'case "$service" in\n  a | b)\n    exec x "$@"\n    ;;\n  *)\n    fail\n    ;;\nesac\n'
    assert ep.case_arms(text) == {"a": 'exec x "$@"', "b": 'exec x "$@"', "*": "fail"}
    with pytest.raises(ValueError, match="no `case"):
        ep.case_arms("echo hi\n")
