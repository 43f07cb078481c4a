"""One log format for every line (issue 18): the service's own lines and the libraries'
stdlib lines come out of the same renderer with the same keys, trace ids included.

Each case runs in a child interpreter: logging is process-wide, and configuring it here
would leave pytest's own capture streams in the global configuration.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

from tests.support.stack import ROOT

_PRELUDE = """
import logging
from shared.logging import configure_logging, get_logger
from shared.settings import Settings
configure_logging(Settings(log_format="{fmt}"), service="probe")
log = get_logger("probe.core")
"""


def run_child(body: str, fmt: str = "json", **env: str) -> subprocess.CompletedProcess[str]:
    code = _PRELUDE.format(fmt=fmt) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def json_lines(body: str, **env: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run_child(body, **env).stderr.splitlines()]


def test_stdlib_lines_are_json_with_the_same_keys() -> None:
    ours, library, failed = json_lines(
        """
        log.warning("ours", delivery_id="d-1", secret="hunter2")
        logging.getLogger("aiokafka.conn").warning("Unable to connect to %s", "node 1")
        try:
            1 / 0
        except ZeroDivisionError:
            logging.getLogger("asyncio").exception("Task exception was never retrieved")
        """
    )
    common = {"event", "level", "timestamp", "logger", "service"}
    assert common <= ours.keys()
    assert common <= library.keys()
    assert ours["logger"] == "probe.core"
    assert ours["secret"] == "***"
    assert library == {
        "event": "Unable to connect to node 1",
        "level": "warning",
        "logger": "aiokafka.conn",
        "service": "probe",
        "timestamp": library["timestamp"],
    }
    assert library["timestamp"].endswith("Z")
    assert failed["level"] == "error"
    assert "ZeroDivisionError" in failed["exception"]


def test_libraries_below_warning_stay_quiet() -> None:
    lines = json_lines(
        """
        logging.getLogger("aiokafka.consumer").info("chatty")
        logging.getLogger("uvicorn.error").warning("visible")
        """
    )
    assert [line["event"] for line in lines] == ["visible"]


def test_coordinator_not_ready_at_start_up_is_not_an_error() -> None:
    not_ready, other = json_lines(
        """
        from aiokafka import errors
        coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
        coordinator.error(
            "Group Coordinator Request failed: %s", errors.GroupCoordinatorNotAvailableError()
        )
        coordinator.error("Group Coordinator Request failed: %s", errors.KafkaConnectionError())
        """
    )
    assert not_ready["level"] == "info"
    assert "CoordinatorNotAvailable" in not_ready["event"]
    assert other["level"] == "error"


def test_console_format_renders_stdlib_lines_like_ours() -> None:
    ours, library = run_child(
        """
        log.warning("ours")
        logging.getLogger("aiokafka.conn").warning("theirs")
        """,
        fmt="console",
    ).stderr.splitlines()
    for line, event, logger in ((ours, "ours", "probe.core"), (library, "theirs", "aiokafka.conn")):
        assert "[warning  ]" in line
        assert event in line
        assert f"[{logger}]" in line


def test_lines_inside_a_span_carry_its_trace_and_span_ids() -> None:
    done = run_child(
        """
        from shared import tracing
        tracing.setup("probe")
        log.warning("before")
        with tracing.tracer().start_as_current_span("work") as span:
            log.warning("inside")
            logging.getLogger("aiokafka").warning("inside too")
            ids = span.get_span_context()
        print(f"{ids.trace_id:032x} {ids.span_id:016x}")
        """,
        # An endpoint nothing listens on, and no export before the child exits.
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
        OTEL_BSP_SCHEDULE_DELAY="600000",
    )
    before, ours, library = [json.loads(line) for line in done.stderr.splitlines()][-3:]
    trace_id, span_id = done.stdout.split()
    assert "trace_id" not in before
    assert "span_id" not in before
    for line in (ours, library):
        assert line["trace_id"] == trace_id
        assert line["span_id"] == span_id
