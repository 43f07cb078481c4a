"""docs/operations.md stays true to shared/settings.py and to the deployment files."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from services.retry_scheduler.settings import SchedulerSettings
from shared.settings import Settings, format_duration
from tests.deploy import compose as cf

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
# Every settings class a service reads: the shared one and the per-service ones.
SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (Settings, SchedulerSettings)
_ROW = re.compile(r"^\|\s*`(HOOKSTREAM_[A-Z0-9_]+)`\s*\|\s*`([^`]*)`\s*\|(.+)\|\s*$")


def documented_default(value: object) -> str:
    """How the settings table writes a default."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, tuple):
        return ",".join(documented_default(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, SecretStr):
        return "***"
    return str(value)


@pytest.fixture(scope="module")
def table() -> dict[str, tuple[str, str]]:
    """``{variable: (default, description)}`` from the settings table."""
    rows: dict[str, tuple[str, str]] = {}
    for line in DOC.read_text().splitlines():
        match = _ROW.match(line)
        if match:
            assert match[1] not in rows, f"{match[1]} is listed twice"
            rows[match[1]] = (match[2], match[3].strip())
    return rows


def all_settings() -> dict[str, tuple[type[BaseSettings], str]]:
    """``{HOOKSTREAM_NAME: (settings class, field)}`` across every settings class."""
    return {
        var: (cls, field)
        for cls in SETTINGS_CLASSES
        for var, field in cf.setting_names(cls).items()
    }


def test_every_setting_is_documented(table: dict[str, tuple[str, str]]) -> None:
    names = set(all_settings())
    assert sorted(names - set(table)) == [], "document these in docs/operations.md"
    assert sorted(set(table) - names) == [], "these are not settings any more"


def test_documented_defaults_are_the_code_defaults(table: dict[str, tuple[str, str]]) -> None:
    wrong = {}
    for var, (cls, field) in all_settings().items():
        info = cls.model_fields[field]
        default = info.get_default(call_default_factory=True)
        if table[var][0] != documented_default(default):
            wrong[var] = (table[var][0], documented_default(default))
    assert wrong == {}, "(documented, code)"


def test_every_setting_says_what_it_does(table: dict[str, tuple[str, str]]) -> None:
    assert [var for var, (_, text) in table.items() if len(text) < 15] == []


def test_every_hookstream_name_in_the_doc_is_a_setting() -> None:
    mentioned = set(re.findall(r"HOOKSTREAM_[A-Z0-9_]+", DOC.read_text()))
    assert sorted(mentioned - set(all_settings())) == []


@pytest.mark.parametrize(
    "topic",
    [
        "min.insync.replicas=2",
        "HOOKSTREAM_TOPIC_REPLICATION_FACTOR=3",
        "Figures come from `make bench`",
        "alembic upgrade head",
        "pg_dump",
        "WAL",
        "no ordering guarantee",
        "--scale dispatcher=3",
    ],
)
def test_production_notes_cover(topic: str) -> None:
    assert topic in DOC.read_text()


def test_sizing_table_has_the_bench_columns() -> None:
    header = next(
        line for line in DOC.read_text().splitlines() if line.startswith("| deployment |")
    )
    assert "deliveries/s per dispatcher process" in header
    assert "PostgreSQL write rate" in header
