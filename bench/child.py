"""Measuring inside a fresh interpreter: nothing of the caller's heap, loop or imports.

``json_child`` runs a bench module as a child process and reads the JSON line it prints
last; ``own_cpu`` is the CPU the calling process has used, user and system together."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from typing import Any


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def json_child(module: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result
