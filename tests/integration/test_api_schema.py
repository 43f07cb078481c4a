"""Schemathesis over the OpenAPI spec of a running ingest: no 5xx, answers match the docs.

Every operation is exercised (examples, coverage, fuzzing and stateful phases) within a
time budget, with the API key, against `python -m services.ingest` on the test stack.
Not checked: ``positive_data_acceptance`` (a reused Idempotency-Key with another body is a
deliberate 422, and fuzzed target URLs may break the configured length limit) and the
405 ``Allow`` header checks (Starlette answers 405 per route, not per path).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.broker import running_ingest
from tests.support.stack import ROOT, IsolatedStack

pytestmark = pytest.mark.slow

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
)
BUDGET_SECONDS = 40


def test_openapi_fuzzing_finds_no_server_error(stack: IsolatedStack, tmp_path: Path) -> None:
    with running_ingest(stack, tmp_path) as ingest:
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "run",
                f"{ingest.url}/openapi.json",
                "--header",
                f"Authorization: Bearer {ingest.api_key}",
                "--checks",
                ",".join(CHECKS),
                "--max-time",
                str(BUDGET_SECONDS),
                "--workers",
                "2",
                "--request-timeout",
                "10",
                "--seed",
                "20261129",
                "--warnings",
                "off",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=BUDGET_SECONDS + 60,
            check=False,
        )
        log = ingest.log()
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "Traceback" not in log, log[-3000:]
    assert '"unhandled error"' not in log
