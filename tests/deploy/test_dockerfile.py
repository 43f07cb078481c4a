"""deploy/docker/Dockerfile and .dockerignore, read without a Docker engine."""

from __future__ import annotations

import re
import tomllib

import pytest

from shared.settings import Settings
from tests.deploy import dockerfile as df
from tests.deploy import entrypoint as ep


@pytest.fixture(scope="module")
def stages() -> list[df.Stage]:
    return df.load()


@pytest.fixture(scope="module")
def final(stages: list[df.Stage]) -> df.Stage:
    return stages[-1]


def dev_requirements() -> list[str]:
    pyproject = tomllib.loads((df.ROOT / "pyproject.toml").read_text())
    specs = pyproject["project"]["optional-dependencies"]["dev"]
    return [re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower() for spec in specs]


def test_slim_python_311_base_in_every_stage(stages: list[df.Stage]) -> None:
    assert len(stages) >= 2, "multi-stage: build tools stay in the build stage"
    bases = {stage.base for stage in stages}
    assert len(bases) == 1, "the virtualenv's python links into the base: keep them equal"
    assert bases.pop().startswith("python:3.11-slim")


def test_runs_as_non_root(final: df.Stage) -> None:
    user = final.last("USER")
    assert user is not None, "the final stage must set USER"
    name = user.args.split(":")[0].strip()
    assert name not in ("root", "0", "")
    # Set before the process starts: nothing after it switches back.
    keywords = [i.keyword for i in final.instructions]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")


def test_project_installed_without_dev_extra(stages: list[df.Stage]) -> None:
    installs = [
        inst.args for stage in stages for inst in stage.all("RUN") if "pip install" in inst.args
    ]
    assert installs, "the image installs the project somewhere"
    for args in installs:
        assert "[dev]" not in args, args
        assert "-e " not in args, args
        assert re.search(r"pip install \.(\s|$)", args), args


def test_final_stage_holds_no_build_tools_or_dev_dependencies(final: df.Stage) -> None:
    runs = " ".join(inst.args for inst in final.all("RUN"))
    assert "pip install" not in runs, "install in the build stage, copy the result"
    assert "apt-get install" not in runs
    dev = dev_requirements()
    assert {"pytest", "ruff", "mypy"} <= set(dev)
    everything = " ".join(i.args for i in final.instructions).lower()
    for name in dev:
        assert not re.search(rf"\b{re.escape(name)}\b", everything), name
    copies_from_build = [i.args for i in final.all("COPY") if "--from=" in i.args]
    assert copies_from_build == ["--from=build /opt/venv /opt/venv"]


def test_build_stage_drops_the_installers(stages: list[df.Stage]) -> None:
    build = stages[0]
    assert any("pip uninstall --yes pip setuptools" in i.args for i in build.all("RUN"))


def test_entrypoint_is_the_repository_script(final: df.Stage) -> None:
    entry = final.last("ENTRYPOINT")
    assert entry is not None
    placed = final.copied_files()
    (path,) = entry.exec_form()
    assert placed.get(path) == "deploy/docker/entrypoint.sh"
    assert ep.ENTRYPOINT.is_file()
    cmd = final.last("CMD")
    assert cmd is not None
    arms = ep.case_arms(ep.ENTRYPOINT.read_text())
    assert cmd.exec_form()[0] in ep.service_names(arms), "the default command is a service"


def test_healthcheck_runs_the_repository_script(final: df.Stage) -> None:
    check = final.last("HEALTHCHECK")
    assert check is not None
    words = check.exec_form()
    assert words[0] == "python"
    assert final.copied_files().get(words[1]) == "deploy/docker/healthcheck.py"
    assert "--timeout=" in check.args
    assert "--interval=" in check.args


def test_migrations_ship_with_the_image(final: df.Stage) -> None:
    placed = final.copied_files()
    assert placed.get("/app/alembic.ini") == "alembic.ini"
    assert placed.get("/app/migrations") == "migrations"
    assert (df.ROOT / "migrations" / "env.py").is_file()
    workdir = final.last("WORKDIR")
    assert workdir is not None
    assert workdir.args == "/app"


def test_image_env_and_ports(final: df.Stage) -> None:
    env = final.env()
    assert env["HOOKSTREAM_HTTP_HOST"] == "0.0.0.0"
    assert "/opt/venv/bin" in env["PATH"]
    assert final.exposed_ports() == [Settings.model_fields["http_port"].default]


def test_build_context_holds_what_copy_needs(stages: list[df.Stage]) -> None:
    rules = df.ignore_rules()
    for stage in stages:
        for inst in stage.all("COPY"):
            if "--from=" in inst.args:
                continue
            words = [w for w in inst.args.split() if not w.startswith("--")]
            for source in words[:-1]:
                assert df.in_context(source, rules), f"{source} is excluded by .dockerignore"
                assert (df.ROOT / source).exists(), source
    assert df.in_context("shared/settings.py", rules)
    assert df.in_context("services/ingest/app.py", rules)
    assert df.in_context("migrations/versions/0001_initial.py", rules)


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".git/config",
        ".venv/bin/python",
        ".local/dev-api-key",
        ".local/pg/data/postgresql.conf",
        "tests/conftest.py",
        "bench/__main__.py",
        "deploy/local/stack.sh",
        "shared/__pycache__/settings.cpython-311.pyc",
        "docker-compose.yml",
    ],
)
def test_build_context_leaves_out(path: str) -> None:
    assert not df.in_context(path, df.ignore_rules())


def test_dockerignore_reader_matches_docker_semantics() -> None:
    rules = [(True, df._pattern_regex("*")), (False, df._pattern_regex("keep"))]
    assert df.in_context("keep/a/b.py", rules)
    assert not df.in_context("drop/a.py", rules)
    rules.append((True, df._pattern_regex("**/__pycache__")))
    assert not df.in_context("keep/x/__pycache__/m.pyc", rules)
    assert df.in_context("keep/x/not__pycache__.py", rules)
