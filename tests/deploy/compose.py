"""Reading docker-compose.yml the way Compose does, and the checks that keep it honest.

No Docker engine runs on the development machines, so these functions stand in for
`docker compose config` plus the review a person would do: every check returns a list of
problems (empty = fine) so a test can show all of them at once, and so a test can feed a
deliberately broken copy (a renamed setting) and see it rejected.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic_settings import BaseSettings

from shared.settings import parse_duration

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"

Compose = dict[str, Any]
Service = dict[str, Any]

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME; $$ is "$".
_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
_REQUIRED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?")
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
_SECRET_NAME = re.compile(r"(KEY|PASSWORD|SECRET|TOKEN)$")
_ADDRESSES = ("HOOKSTREAM_DATABASE_URL", "HOOKSTREAM_REDIS_URL", "HOOKSTREAM_KAFKA_BOOTSTRAP")


class InterpolationError(ValueError):
    pass


def load(path: Path = COMPOSE_FILE) -> Compose:
    """The compose file as data; YAML merge keys (``<<: *anchor``) are resolved."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a mapping")
    return data


def required_variables(text: str) -> set[str]:
    """Names Compose refuses to run without (``${NAME:?...}`` / ``${NAME?...}``)."""
    return set(_REQUIRED.findall(text))


def read_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """KEY=VALUE lines of a Compose .env file; comments and blank lines skipped."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: not KEY=VALUE: {line!r}")
        env[key.strip()] = value.strip().strip("'\"")
    return env


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution of one string."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        current = env.get(name)
        if op is None:
            return current or ""
        empty_counts = op.startswith(":")
        missing = current is None or (empty_counts and current == "")
        if op.endswith("-"):
            return arg if missing else str(current)
        if missing:
            raise InterpolationError(f"{name}: {arg or 'required'}")
        return str(current)

    return _VAR.sub(substitute, value)


def services(compose: Compose) -> dict[str, Service]:
    result = compose.get("services") or {}
    if not isinstance(result, dict):
        raise ValueError("services is not a mapping")
    return result


def hookstream_services(compose: Compose) -> dict[str, Service]:
    """Services built from this repository's image (they have a ``build`` section)."""
    return {name: svc for name, svc in services(compose).items() if "build" in svc}


def long_running(compose: Compose) -> dict[str, Service]:
    """Hookstream services that run until stopped (not the one-shot jobs)."""
    return {
        name: svc
        for name, svc in hookstream_services(compose).items()
        if str(svc.get("restart", "no")) != "no"
    }


def command_of(svc: Service) -> list[str]:
    command = svc.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def environment_of(svc: Service) -> dict[str, str | None]:
    """A service's ``environment`` as a mapping; None = pass through from the shell/.env."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {k: (v if sep else None) for k, sep, v in pairs}
    return {str(k): None if v is None else _env_str(v) for k, v in env.items()}


def _env_str(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def resolved_environment(svc: Service, env: Mapping[str, str]) -> dict[str, str]:
    """What the container sees: values interpolated, pass-through names taken from
    ``env`` (the shell and .env) or left unset."""
    result: dict[str, str] = {}
    for key, value in environment_of(svc).items():
        if value is None:
            if key in env:
                result[key] = env[key]
        else:
            result[key] = interpolate(value, env)
    return result


def env_name(settings_cls: type[BaseSettings], field: str) -> str:
    """The variable a settings field is read from: prefix + field name upper-cased."""
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    return f"{prefix}{field}".upper()


def setting_names(settings_cls: type[BaseSettings]) -> dict[str, str]:
    """``{HOOKSTREAM_NAME: field}`` for every field of the settings class."""
    return {env_name(settings_cls, field): field for field in settings_cls.model_fields}


def _prefix(settings_cls: type[BaseSettings]) -> str:
    return str(settings_cls.model_config.get("env_prefix", "")).upper()


# --- checks: each returns a list of problems ---------------------------------------------


def unknown_settings(
    compose: Compose, settings_cls: type[BaseSettings], extra_env: Mapping[str, str] | None = None
) -> list[str]:
    """Every HOOKSTREAM_ variable set anywhere (each service, or e.g. the Dockerfile's
    ENV as ``extra_env``) must be a field of the settings class."""
    known = setting_names(settings_cls)
    prefix = _prefix(settings_cls)
    sources: list[tuple[str, Iterable[str]]] = [
        (f"service {name}", environment_of(svc)) for name, svc in services(compose).items()
    ]
    sources.append(("the image", extra_env or {}))
    return [
        f"{where} sets {var}, which is not a field of {settings_cls.__name__}"
        for where, names in sources
        for var in names
        if var.startswith(prefix) and var not in known
    ]


def missing_required(compose: Compose, settings_cls: type[BaseSettings]) -> list[str]:
    """A setting without a default must be set by every Hookstream service."""
    required = [f for f, info in settings_cls.model_fields.items() if info.is_required()]
    problems = []
    for name, svc in hookstream_services(compose).items():
        env = environment_of(svc)
        for field in required:
            var = env_name(settings_cls, field)
            if var not in env:
                problems.append(f"service {name} does not set {var}, which has no default")
    return problems


def loopback_addresses(compose: Compose, env: Mapping[str, str]) -> list[str]:
    """Inside a container, 127.0.0.1 is the container itself: the code's defaults for
    PostgreSQL, Redis and Kafka must be replaced in every Hookstream service."""
    problems = []
    for name, svc in hookstream_services(compose).items():
        resolved = resolved_environment(svc, env)
        for var in _ADDRESSES:
            value = resolved.get(var)
            if value is None:
                problems.append(f"service {name} leaves {var} at the code's loopback default")
            elif any(host in value for host in _LOOPBACK):
                problems.append(f"service {name}: {var} points at loopback: {value}")
    return problems


def committed_secrets(compose: Compose) -> list[str]:
    """A variable named like a secret must come from the environment (``${...}``), never
    be written in the file."""
    problems = []
    for name, svc in services(compose).items():
        for var, value in environment_of(svc).items():
            if value is None or not _SECRET_NAME.search(var):
                continue
            if not re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?\?[^}]*\}", value):
                problems.append(f"service {name}: {var} is not taken from the environment")
    return problems


def depends_on_problems(compose: Compose, image_has_healthcheck: bool) -> list[str]:
    """depends_on targets exist; service_healthy targets have a health check;
    service_completed_successfully targets are one-shot jobs."""
    svcs = services(compose)
    problems = []
    for name, svc in svcs.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for target, spec in deps.items():
            condition = (spec or {}).get("condition", "service_started")
            if target not in svcs:
                problems.append(f"service {name} depends on {target}, which does not exist")
                continue
            other = svcs[target]
            if condition == "service_healthy" and not has_healthcheck(other, image_has_healthcheck):
                problems.append(f"service {name} waits for {target} to be healthy; it has no check")
            one_shot = str(other.get("restart", "no")) == "no"
            if condition == "service_completed_successfully" and not one_shot:
                problems.append(f"service {name} waits for {target} to complete; it restarts")
    return problems


def has_healthcheck(svc: Service, image_has_healthcheck: bool) -> bool:
    check = svc.get("healthcheck")
    if check is None:
        return "build" in svc and image_has_healthcheck
    if check.get("disable"):
        return False
    test = check.get("test")
    return bool(test) and test != ["NONE"]


def healthcheck_problems(compose: Compose, image_has_healthcheck: bool) -> list[str]:
    return [
        f"service {name} runs until stopped but has no health check"
        for name, svc in long_running(compose).items()
        if not has_healthcheck(svc, image_has_healthcheck)
    ]


def container_ports(svc: Service) -> list[int]:
    """Container-side ports of a service's ``ports`` (short and long syntax)."""
    result = []
    for entry in svc.get("ports") or []:
        if isinstance(entry, dict):
            result.append(int(entry["target"]))
        else:
            result.append(int(str(entry).rsplit(":", 1)[-1].split("/")[0]))
    return result


def ingest_port_problems(
    compose: Compose,
    settings_cls: type[BaseSettings],
    env: Mapping[str, str],
    image_env: Mapping[str, str],
    exposed: Iterable[int],
) -> list[str]:
    """ingest listens where compose publishes and where its health check looks."""
    svc = services(compose).get("ingest")
    if svc is None:
        return ["there is no ingest service"]
    resolved = {**image_env, **resolved_environment(svc, env)}
    field_default = settings_cls.model_fields["http_port"].default
    port = int(resolved.get("HOOKSTREAM_HTTP_PORT", field_default))
    host = resolved.get("HOOKSTREAM_HTTP_HOST", settings_cls.model_fields["http_host"].default)
    problems = []
    if host not in ("0.0.0.0", "::"):
        problems.append(f"ingest listens on {host}: a published port cannot reach it")
    published = container_ports(svc)
    if not published:
        problems.append("ingest publishes no port")
    problems += [
        f"ingest publishes container port {p}, but HOOKSTREAM_HTTP_PORT is {port}"
        for p in published
        if p != port
    ]
    if port not in set(exposed):
        problems.append(f"the image does not EXPOSE ingest's port {port}")
    urls = [a for a in (svc.get("healthcheck") or {}).get("test", []) if "://" in str(a)]
    if not urls:
        problems.append("ingest's health check names no URL")
    for url in urls:
        parts = urlsplit(url)
        if parts.port != port or parts.hostname not in _LOOPBACK or parts.path != "/health":
            problems.append(f"ingest's health check {url} is not /health on port {port}")
    return problems


def scalable_problems(compose: Compose, name: str) -> list[str]:
    """`docker compose up --scale <name>=N` needs no fixed name and no host port."""
    svc = services(compose).get(name)
    if svc is None:
        return [f"there is no {name} service"]
    problems = []
    if "container_name" in svc:
        problems.append(f"{name} has a container_name: a second replica would clash")
    if svc.get("ports"):
        problems.append(f"{name} publishes host ports: a second replica would clash")
    return problems


def volume_problems(compose: Compose) -> list[str]:
    declared = set((compose.get("volumes") or {}).keys())
    problems = []
    for name, svc in services(compose).items():
        for volume in svc.get("volumes") or []:
            source = volume["source"] if isinstance(volume, dict) else str(volume).split(":")[0]
            named = not source.startswith((".", "/", "~", "$"))
            if named and source not in declared:
                problems.append(f"service {name} uses volume {source}, not declared")
    return problems


def grace_period(svc: Service) -> timedelta:
    """``stop_grace_period`` (Docker's default is 10 s)."""
    return parse_duration(str(svc.get("stop_grace_period", "10s")))
