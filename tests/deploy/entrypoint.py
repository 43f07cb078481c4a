"""The container entry point's ``case`` arms, read from the script itself."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"

_CASE = re.compile(r'^\s*case\s+"?\$\{?service\}?"?\s+in\s*$')
_ARM = re.compile(r"^\s*([^()#]+)\)\s*$")
_PYTHON_MODULE = re.compile(r'python\s+-m\s+"?([A-Za-z0-9_.$]+)"?')


def case_arms(text: str) -> dict[str, str]:
    """``{pattern: body}`` for each alternative of ``case "$service" in ... esac``."""
    arms: dict[str, str] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if _CASE.match(line):
            break
    else:
        raise ValueError('no `case "$service" in` in the entry point')
    patterns: list[str] = []
    body: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped == "esac":
            break
        header = _ARM.match(line)
        if header and not patterns:
            patterns = [p.strip() for p in header[1].split("|")]
            body = []
        elif stripped == ";;":
            arms.update(dict.fromkeys(patterns, "\n".join(body)))
            patterns = []
        elif patterns:
            body.append(stripped)
    return arms


def service_names(arms: dict[str, str]) -> set[str]:
    """Patterns that name a role (not the catch-all or the help spellings)."""
    return {p for p in arms if p != "*" and not p.startswith("-") and p != "help"}


def module_run_by(arm_body: str, name: str) -> str | None:
    """The module an arm runs with ``python -m`` for service ``name``."""
    match = _PYTHON_MODULE.search(arm_body)
    if match is None:
        return None
    return match[1].replace("${service}", name).replace("$service", name)


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """Where ``python -m module`` finds its code in this repository, if anywhere."""
    base = root.joinpath(*module.split("."))
    for candidate in (base / "__main__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None
