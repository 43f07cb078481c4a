"""docker-compose.yml against the code: commands, settings, ports, health, dependencies.

No Docker engine runs here, so these tests are what keeps the compose file honest. Each
check reports every problem it finds; the `renamed` tests show a check rejecting a copy
of the settings (or of the compose file) that has drifted.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from shared.settings import Settings
from tests.deploy import compose as cf
from tests.deploy import dockerfile as df
from tests.deploy import entrypoint as ep


@pytest.fixture(scope="module")
def compose() -> cf.Compose:
    return cf.load()


@pytest.fixture(scope="module")
def final_stage() -> df.Stage:
    return df.load()[-1]


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    """The interpolation environment of a user who filled in .env.example: its required
    (empty) values get stand-ins, as the user would set them."""
    values = cf.read_env_file()
    return {k: v or f"stand-in-{k.lower().replace('_', '-')}" for k, v in values.items()}


def renamed(settings_cls: type[BaseSettings], old: str, new: str) -> type[BaseSettings]:
    """A copy of the settings class with one field renamed, as if renamed in code."""
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {"model_config": settings_cls.model_config}
    for name, info in settings_cls.model_fields.items():
        key = new if name == old else name
        annotations[key] = info.annotation
        namespace[key] = copy.copy(info)
    namespace["__annotations__"] = annotations
    return type(f"Renamed{settings_cls.__name__}", (BaseSettings,), namespace)


def with_required(settings_cls: type[BaseSettings], field: str) -> type[BaseSettings]:
    """A copy of the settings class with one more setting that has no default."""
    namespace: dict[str, Any] = {
        "__annotations__": {field: str},
        field: FieldInfo(annotation=str),
    }
    return type(f"Required{settings_cls.__name__}", (settings_cls,), namespace)


# --- the services and their commands -----------------------------------------------------


def test_compose_has_the_stack(compose: cf.Compose) -> None:
    expected = {
        "redpanda", "console", "postgres", "redis", "migrate", "topics",
        "ingest", "dispatcher", "retry_scheduler", "janitor",
    }  # fmt: skip
    assert expected <= set(cf.services(compose))
    assert set(cf.long_running(compose)) == {"ingest", "dispatcher", "retry_scheduler", "janitor"}


def test_every_command_is_handled_by_the_entrypoint_and_exists_in_code(
    compose: cf.Compose,
) -> None:
    arms = ep.case_arms(ep.ENTRYPOINT.read_text())
    problems = []
    for name, svc in cf.hookstream_services(compose).items():
        command = cf.command_of(svc)
        if not command:
            problems.append(f"{name}: no command (the image would default to ingest)")
            continue
        role = command[0]
        if role not in ep.service_names(arms):
            problems.append(f"{name}: entrypoint.sh has no arm for {role!r}")
            continue
        module = ep.module_run_by(arms[role], role)
        if module is not None and ep.module_file(module) is None:
            problems.append(f"{name}: {role!r} runs python -m {module}, which does not exist")
    assert problems == []


def test_each_service_module_runs_in_compose(compose: cf.Compose) -> None:
    """A new services/<name>/ gets noticed: compose must run it."""
    in_code = {p.parent.name for p in (cf.ROOT / "services").glob("*/__main__.py")}
    roles = {cf.command_of(svc)[0] for svc in cf.long_running(compose).values()}
    assert sorted(in_code - roles) == [], "services/<name>/__main__.py that compose never runs"
    assert sorted(roles - in_code) == [], "compose runs services that are not in services/"


def test_one_shot_jobs_migrate_and_create_topics(compose: cf.Compose) -> None:
    svcs = cf.services(compose)
    assert cf.command_of(svcs["migrate"]) == ["migrate"]
    assert cf.command_of(svcs["topics"]) == ["topics"]
    for job in ("migrate", "topics"):
        assert svcs[job]["restart"] == "no"
        assert not cf.has_healthcheck(svcs[job], image_has_healthcheck=True)


def test_every_hookstream_service_uses_the_one_image(compose: cf.Compose) -> None:
    ours = cf.hookstream_services(compose)
    assert {svc["image"] for svc in ours.values()} == {"hookstream:local"}
    for svc in ours.values():
        assert svc["build"] == {"context": ".", "dockerfile": "deploy/docker/Dockerfile"}
    assert (cf.ROOT / "deploy/docker/Dockerfile").is_file()


# --- settings --------------------------------------------------------------------------------


def test_every_hookstream_variable_is_a_setting(compose: cf.Compose, final_stage: df.Stage) -> None:
    assert cf.unknown_settings(compose, Settings, final_stage.env()) == []


def test_a_setting_renamed_in_code_but_not_in_compose_is_rejected(compose: cf.Compose) -> None:
    drifted = renamed(Settings, "kafka_bootstrap", "kafka_brokers")
    assert "kafka_brokers" in drifted.model_fields
    assert "kafka_bootstrap" not in drifted.model_fields
    problems = cf.unknown_settings(compose, drifted)
    assert problems
    assert all("HOOKSTREAM_KAFKA_BOOTSTRAP" in p for p in problems)
    # Every Hookstream service sets it (via the shared anchor), and each is named.
    assert len(problems) == len(cf.hookstream_services(compose))


def test_a_setting_renamed_in_compose_but_not_in_code_is_rejected(compose: cf.Compose) -> None:
    drifted = copy.deepcopy(compose)
    # The workers share one environment mapping (a YAML anchor): rename in one only.
    env = dict(drifted["services"]["dispatcher"]["environment"])
    env["HOOKSTREAM_DELIVERY_TIMEOUT_SECONDS"] = env.pop("HOOKSTREAM_DELIVERY_TIMEOUT")
    drifted["services"]["dispatcher"]["environment"] = env
    assert cf.unknown_settings(drifted, Settings) == [
        "service dispatcher sets HOOKSTREAM_DELIVERY_TIMEOUT_SECONDS, "
        "which is not a field of Settings"
    ]


def test_renamed_copy_is_a_faithful_settings_class() -> None:
    """The drift tests above mean something only if the copy behaves like Settings."""
    drifted = renamed(Settings, "kafka_bootstrap", "kafka_brokers")
    assert issubclass(drifted, BaseModel)
    names = cf.setting_names(drifted)
    assert len(names) == len(Settings.model_fields)
    assert "HOOKSTREAM_KAFKA_BROKERS" in names


def test_settings_without_a_default_are_provided(compose: cf.Compose) -> None:
    assert cf.missing_required(compose, Settings) == []
    stricter = with_required(Settings, "signing_key")
    problems = cf.missing_required(compose, stricter)
    assert len(problems) == len(cf.hookstream_services(compose))
    assert all("HOOKSTREAM_SIGNING_KEY" in p for p in problems)


def test_each_container_builds_valid_settings(
    compose: cf.Compose,
    env: dict[str, str],
    final_stage: df.Stage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each container's environment, read by Settings() exactly as the service reads it
    (types, bounds, durations, an operator's overrides from .env)."""
    overrides = {**env, "HOOKSTREAM_RETRY_SCHEDULE": "5s,1m", "HOOKSTREAM_LOG_LEVEL": "DEBUG"}
    for name, svc in cf.hookstream_services(compose).items():
        with monkeypatch.context() as m:
            # `make test` exports HOOKSTREAM_ variables: the container would not have them.
            for key in [k for k in os.environ if k.startswith("HOOKSTREAM_")]:
                m.delenv(key)
            for key, value in {
                **final_stage.env(),
                **cf.resolved_environment(svc, overrides),
            }.items():
                m.setenv(key, value)
            settings = Settings()
        assert settings.kafka_bootstrap == "redpanda:9092", name
        assert settings.database_url.startswith("postgresql+asyncpg://hookstream:"), name
        assert [d.total_seconds() for d in settings.retry_schedule] == [5, 60], name
        assert settings.log_level == "DEBUG", name


def test_overrides_from_env_file_reach_every_container(
    compose: cf.Compose, env: dict[str, str]
) -> None:
    """Topic names derive from the prefix and the retry schedule: the topics job and
    every service must see the same values, including an operator's override."""
    overrides = {**env, "HOOKSTREAM_TOPIC_PREFIX": "acme", "HOOKSTREAM_RETRY_SCHEDULE": "5s,1m"}
    seen = {
        name: (
            resolved.get("HOOKSTREAM_TOPIC_PREFIX"),
            resolved.get("HOOKSTREAM_RETRY_SCHEDULE"),
            resolved.get("HOOKSTREAM_EVENTS_PARTITIONS"),
        )
        for name, svc in cf.hookstream_services(compose).items()
        for resolved in [cf.resolved_environment(svc, overrides)]
    }
    assert set(seen.values()) == {("acme", "5s,1m", None)}, seen


def test_container_addresses_are_not_loopback(compose: cf.Compose, env: dict[str, str]) -> None:
    assert cf.loopback_addresses(compose, env) == []


# --- secrets ---------------------------------------------------------------------------------


def test_no_secret_is_committed(compose: cf.Compose) -> None:
    assert cf.committed_secrets(compose) == []
    ingest_env = cf.environment_of(cf.services(compose)["ingest"])
    assert ingest_env["HOOKSTREAM_API_KEY"] == "${HOOKSTREAM_API_KEY:?set it in .env}"


def test_env_example_provides_every_required_variable_and_no_secret() -> None:
    required = cf.required_variables(cf.COMPOSE_FILE.read_text())
    assert {"HOOKSTREAM_API_KEY", "POSTGRES_PASSWORD"} <= required
    example = cf.read_env_file()
    assert required <= set(example), "add them to .env.example"
    assert {k: example[k] for k in required} == dict.fromkeys(required, ""), (
        ".env.example must leave secrets empty"
    )


def test_compose_refuses_to_start_without_the_secrets(compose: cf.Compose) -> None:
    ingest = cf.services(compose)["ingest"]
    keys = {"HOOKSTREAM_ENCRYPTION_KEYS": "a-key"}
    with pytest.raises(cf.InterpolationError, match="HOOKSTREAM_API_KEY"):
        cf.resolved_environment(ingest, {"POSTGRES_PASSWORD": "x", **keys})
    with pytest.raises(cf.InterpolationError, match="POSTGRES_PASSWORD"):
        cf.resolved_environment(
            ingest, {"HOOKSTREAM_API_KEY": "k", "POSTGRES_PASSWORD": "", **keys}
        )
    # Every container reads or writes subscription secrets: none starts without the keys.
    checked = []
    for name, service in cf.services(compose).items():
        if "HOOKSTREAM_DATABASE_URL" in str(service.get("environment", "")):
            with pytest.raises(cf.InterpolationError, match="HOOKSTREAM_ENCRYPTION_KEYS"):
                cf.resolved_environment(
                    service, {"HOOKSTREAM_API_KEY": "k", "POSTGRES_PASSWORD": "x"}
                )
            checked.append(name)
    assert {"ingest", "dispatcher", "migrate"} <= set(checked)


def test_env_files_stay_out_of_git_and_the_image() -> None:
    ignored = (cf.ROOT / ".gitignore").read_text().split()
    assert ".env" in ignored
    assert not df.in_context(".env", df.ignore_rules())


def test_env_example_names_only_real_settings() -> None:
    mentioned = set(re.findall(r"HOOKSTREAM_[A-Z0-9_]+", cf.ENV_EXAMPLE.read_text()))
    names = set(cf.setting_names(Settings))
    assert len(mentioned) > 3, "the example names no optional settings"
    assert mentioned <= names


# --- ports, health, dependencies, scaling -------------------------------------------------------


def test_ingest_port_and_healthcheck_agree(
    compose: cf.Compose, env: dict[str, str], final_stage: df.Stage
) -> None:
    problems = cf.ingest_port_problems(
        compose, Settings, env, final_stage.env(), final_stage.exposed_ports()
    )
    assert problems == []
    assert cf.container_ports(cf.services(compose)["ingest"]) == [8000]


def test_a_moved_ingest_port_is_caught(
    compose: cf.Compose, env: dict[str, str], final_stage: df.Stage
) -> None:
    drifted = copy.deepcopy(compose)
    drifted["services"]["ingest"]["environment"]["HOOKSTREAM_HTTP_PORT"] = "9000"
    problems = cf.ingest_port_problems(
        drifted, Settings, env, final_stage.env(), final_stage.exposed_ports()
    )
    assert any("publishes container port 8000" in p for p in problems)
    assert any("health check" in p for p in problems)
    assert any("EXPOSE" in p for p in problems)


def test_long_running_services_have_healthchecks(compose: cf.Compose) -> None:
    assert cf.healthcheck_problems(compose, image_has_healthcheck=True) == []
    # Not by accident of the image's HEALTHCHECK: each says so in compose.
    assert cf.healthcheck_problems(compose, image_has_healthcheck=False) == []


def test_worker_healthchecks_probe_a_metrics_port(compose: cf.Compose) -> None:
    script = "/app/deploy/docker/healthcheck.py"
    for name in ("dispatcher", "retry_scheduler", "janitor"):
        svc = cf.services(compose)[name]
        assert script in svc["healthcheck"]["test"], name
        port = cf.environment_of(svc).get("HOOKSTREAM_METRICS_PORT")
        assert port is not None, f"{name}: without a metrics port the check is liveness only"
        assert 0 < int(port) < 65536


def test_depends_on_targets_exist_and_are_checkable(compose: cf.Compose) -> None:
    assert cf.depends_on_problems(compose, image_has_healthcheck=True) == []


def test_services_wait_for_healthy_dependencies_and_finished_jobs(compose: cf.Compose) -> None:
    svcs = cf.services(compose)
    for name in ("ingest", "dispatcher", "retry_scheduler"):
        deps = svcs[name]["depends_on"]
        assert {k: v["condition"] for k, v in deps.items()} == {
            "postgres": "service_healthy",
            "redis": "service_healthy",
            "redpanda": "service_healthy",
            "migrate": "service_completed_successfully",
            "topics": "service_completed_successfully",
        }, name
    assert svcs["janitor"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert svcs["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert svcs["topics"]["depends_on"] == {"redpanda": {"condition": "service_healthy"}}
    assert svcs["console"]["depends_on"]["redpanda"]["condition"] == "service_healthy"


def test_a_dependency_without_healthcheck_is_caught(compose: cf.Compose) -> None:
    drifted = copy.deepcopy(compose)
    del drifted["services"]["redis"]["healthcheck"]
    drifted["services"]["ingest"]["depends_on"]["ghost"] = {"condition": "service_started"}
    problems = cf.depends_on_problems(drifted, image_has_healthcheck=True)
    assert "service ingest depends on ghost, which does not exist" in problems
    assert "service dispatcher waits for redis to be healthy; it has no check" in problems


def test_dispatcher_scales(compose: cf.Compose) -> None:
    assert cf.scalable_problems(compose, "dispatcher") == []
    assert cf.scalable_problems(compose, "retry_scheduler") == []
    drifted = copy.deepcopy(compose)
    drifted["services"]["dispatcher"]["container_name"] = "hookstream-dispatcher"
    drifted["services"]["dispatcher"]["ports"] = ["9100:9100"]
    assert len(cf.scalable_problems(drifted, "dispatcher")) == 2


def test_no_container_names_anywhere(compose: cf.Compose) -> None:
    """A fixed name would also clash with a second checkout's stack."""
    assert [n for n, s in cf.services(compose).items() if "container_name" in s] == []


def test_restart_policies(compose: cf.Compose) -> None:
    for name, svc in cf.services(compose).items():
        expected = "no" if name in ("migrate", "topics") else "unless-stopped"
        assert svc.get("restart") == expected, name


def test_named_volumes_are_declared(compose: cf.Compose) -> None:
    assert cf.volume_problems(compose) == []
    mounts = {
        name: [v.split(":")[0] for v in svc.get("volumes", [])]
        for name, svc in cf.services(compose).items()
    }
    assert mounts["postgres"] == ["postgres-data"]
    assert mounts["redis"] == ["redis-data"]
    assert mounts["redpanda"] == ["redpanda-data"]


def test_workers_get_time_to_drain(compose: cf.Compose) -> None:
    """SIGTERM → finish in-flight deliveries (each up to delivery_timeout) → commit."""
    delivery_timeout = Settings.model_fields["delivery_timeout"].default
    for name in ("dispatcher", "retry_scheduler"):
        grace = cf.grace_period(cf.services(compose)[name])
        assert grace.total_seconds() > 2 * delivery_timeout, name


# --- the infrastructure ------------------------------------------------------------------------


def test_redpanda_is_single_node_dev_mode_and_advertises_its_service_name(
    compose: cf.Compose,
) -> None:
    redpanda = cf.services(compose)["redpanda"]
    command = cf.command_of(redpanda)
    for flag in ("--mode=dev-container", "--smp=1", "--overprovisioned"):
        assert flag in command
    advertised = next(c for c in command if c.startswith("--advertise-kafka-addr="))
    bootstrap = cf.environment_of(cf.services(compose)["dispatcher"])["HOOKSTREAM_KAFKA_BOOTSTRAP"]
    assert f"internal://{bootstrap}" in advertised


def test_console_points_at_the_broker(compose: cf.Compose) -> None:
    console = cf.environment_of(cf.services(compose)["console"])
    assert console["KAFKA_BROKERS"] == "redpanda:9092"


def test_database_url_matches_postgres_service(compose: cf.Compose, env: dict[str, str]) -> None:
    postgres = cf.resolved_environment(cf.services(compose)["postgres"], env)
    url = cf.resolved_environment(cf.services(compose)["ingest"], env)["HOOKSTREAM_DATABASE_URL"]
    user, db, password = (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_DB"],
        postgres["POSTGRES_PASSWORD"],
    )
    assert url == f"postgresql+asyncpg://{user}:{password}@postgres:5432/{db}"
    assert cf.services(compose)["postgres"]["image"].startswith("postgres:15")
    assert cf.services(compose)["redis"]["image"].startswith("redis:7")
