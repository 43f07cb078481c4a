"""The dashboard's pure parts: session cookie, chart geometry, payload display, escaping.

Plain unit tests (no stack, no browser); they live beside the browser tests they support.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath

import pytest

from services.ingest.ui import session as cookies
from services.ingest.ui.chart import HEIGHT, nice_ceiling, per_minute_chart
from services.ingest.ui.payload import payload_view
from services.ingest.ui.web import STATIC_DIR, TEMPLATES_DIR, safe_next, templates
from tests.support.stack import ROOT

KEY = b"the-api-key"
TOKEN = "t" * 43


def test_a_cookie_names_its_token_under_the_same_key_only() -> None:
    value = cookies.cookie_value(TOKEN, KEY)
    assert cookies.token_of(value, KEY) == TOKEN
    assert KEY.decode() not in value
    # Rotating the key: every cookie issued before names nothing.
    assert cookies.token_of(value, b"the-rotated-key") is None
    # With no key configured nobody is logged in.
    assert cookies.token_of(value, None) is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda v: v[:-1] + ("A" if v[-1] != "A" else "B"),  # another tag
        lambda v: "u" + v[1:],  # another token, the same tag
        lambda v: v[: v.index(".")],  # no tag
        lambda v: v.replace(".", ""),
        lambda v: v + ".x",
        lambda v: "." + v[v.index(".") + 1 :],
        lambda v: v + "A" * 200,
        lambda v: "",
    ],
)
def test_a_changed_cookie_is_no_session(mangle: object) -> None:
    value = cookies.cookie_value(TOKEN, KEY)
    assert callable(mangle)
    assert cookies.token_of(mangle(value), KEY) is None


def test_csrf_tokens_compare_exactly() -> None:
    token = cookies.new_csrf()
    assert cookies.csrf_matches(token, token)
    for wrong in (None, "", token[:-1], token + "x", token.upper(), "é"):
        assert not cookies.csrf_matches(token, wrong)
    # No token on either side matches nothing, an empty one included.
    assert not cookies.csrf_matches("", "")
    assert not cookies.csrf_matches(None, token)
    assert cookies.new_csrf() != token


def test_the_login_forms_cookie_is_taken_only_when_plausible() -> None:
    token = cookies.new_csrf()
    assert cookies.login_csrf_of(token) == token
    assert cookies.login_csrf_of(None) is None
    assert cookies.login_csrf_of("") is None
    assert cookies.login_csrf_of("x" * 101) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "/ui"),
        ("/ui/dlq?subscription_id=x", "/ui/dlq?subscription_id=x"),
        ("https://evil.example/ui", "/ui"),
        ("//evil.example", "/ui"),
        ("/\\evil.example", "/ui"),
        ("/status/dlq", "/ui"),
        ("/ui/login", "/ui"),
    ],
)
def test_after_login_only_dashboard_paths(value: str | None, expected: str) -> None:
    assert safe_next(value) == expected


@pytest.mark.parametrize(
    ("value", "ceiling"), [(0, 1), (1, 1), (2, 2), (3, 5), (7, 10), (10, 10), (11, 20), (999, 1000)]
)
def test_nice_ceiling(value: int, ceiling: int) -> None:
    assert nice_ceiling(value) == ceiling


def test_chart_stacks_outcomes_per_minute() -> None:
    first = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    counts = [
        (first, "SUCCESS", 6),
        (first, "FAILURE", 2),
        (first + timedelta(minutes=59), "FAILED_ATTEMPT", 10),
        (first - timedelta(minutes=1), "SUCCESS", 99),  # before the window: ignored
        (first + timedelta(minutes=60), "SUCCESS", 99),  # after it: ignored
    ]
    chart = per_minute_chart(counts, first, 60)
    assert chart.totals == {"SUCCESS": 6, "FAILED_ATTEMPT": 10, "FAILURE": 2}
    success, failure, retried = chart.bars
    assert (success.outcome, failure.outcome, retried.outcome) == (
        "SUCCESS",
        "FAILURE",
        "FAILED_ATTEMPT",
    )
    # The axis tops at 10; the first minute's 8 attempts stack to 80 % of the plot.
    plot_bottom = chart.plot_bottom
    assert success.y + success.height == pytest.approx(plot_bottom)
    assert failure.y + failure.height == pytest.approx(success.y)
    assert (plot_bottom - failure.y) / (plot_bottom - retried.y) == pytest.approx(0.8, abs=0.01)
    assert retried.x > failure.x
    assert retried.label == "12:59 UTC: 10 FAILED_ATTEMPT"
    assert [t.label for t in chart.y_ticks] == ["0", "5", "10"]
    assert [t.label for t in chart.x_ticks][:2] == ["12:00", "12:10"]
    assert all(0 <= b.y <= HEIGHT for b in chart.bars)


def test_an_empty_chart_still_has_axes() -> None:
    chart = per_minute_chart([], datetime(2026, 1, 1, tzinfo=UTC), 60)
    assert chart.bars == []
    assert [t.label for t in chart.y_ticks] == ["0", "1"]


def test_json_payloads_are_pretty_printed_as_sent() -> None:
    view = payload_view(b'{"b":1,"a":[12345678901234567890123,1.5],"s":"\\u00e9"}')
    assert view.is_json
    assert not view.truncated
    assert view.text == (
        '{\n  "b": 1,\n  "a": [\n    12345678901234567890123,\n    1.5\n  ],\n  "s": "é"\n}'
    )


def test_other_payloads_are_text_and_big_ones_are_capped() -> None:
    assert payload_view(b"a=1&b=<x>").text == "a=1&b=<x>"
    assert payload_view(b"\xff\xfeok").text == "\ufffd\ufffdok"
    big = payload_view(b"x" * 100_000, limit=65_536)
    assert (big.truncated, len(big.text), big.size, big.is_json) == (True, 65_536, 100_000, False)
    # A cut never leaves half a character.
    assert payload_view("é".encode() * 10, limit=5).text == "éé"


def test_templates_escape_everything() -> None:
    assert templates.autoescape is True
    html = templates.from_string("<pre>{{ v }}</pre><a title='{{ v }}'>").render(
        v="<script>alert(1)</script>'\""
    )
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#39;&#34;" in html


def test_every_template_and_static_file_is_packaged() -> None:
    """``pip install .`` (the Docker image) ships only the data files pyproject names."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["services.ingest.ui"]
    package = ROOT / "services" / "ingest" / "ui"
    files = [
        PurePosixPath(p.relative_to(package).as_posix())
        for folder in (TEMPLATES_DIR, STATIC_DIR)
        for p in folder.rglob("*")
        if p.is_file()
    ]
    assert files
    missing = [f for f in files if not any(f.match(pattern) for pattern in patterns)]
    assert missing == []
