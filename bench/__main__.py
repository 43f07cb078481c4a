"""`python -m bench [section ...]`: run benchmark sections against the local stack.

Each section is a module ``bench/<name>.py`` with ``run(stack) -> list[dict]``; a row is
``{"section", "metric", "value", "unit", "note"}``. Comparisons (ours vs a baseline) are
measured side by side in the same run, because this 2-core machine is noisy.
Results go to ``bench/results/<date>.json`` and ``bench/results/<date>.md``.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.stack import IsolatedStack

SECTIONS = (
    "ingest",
    "delivery",
    "tracing",
    "fanout",
    "isolation",
    "janitor",
    "ui",
    "applications",
    "scale",
    "targets",
    "backfill",
    "search",
    "latency",
    "cluster",
)
RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Benchmark run {meta['started_at']} on {meta['machine']['cpus']} cores "
        f"({meta['machine']['cpu_model']}), {meta['machine']['memory_gib']} GiB, "
        f"Python {meta['machine']['python']}.",
        "",
        "| section | metric | value | unit | note |",
        "|---|---|---:|---|---|",
    ]
    for r in rows:
        value = r["value"]
        shown = f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"
        lines.append(
            f"| {r['section']} | {r['metric']} | {shown} | {r['unit']} | {r.get('note', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    wanted = argv or [s for s in SECTIONS if (Path(__file__).parent / f"{s}.py").exists()]
    meta = {"started_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine()}
    rows: list[dict[str, Any]] = []
    for name in wanted:
        module = importlib.import_module(f"bench.{name}")
        stack = IsolatedStack()
        stack.up()
        try:
            t0 = time.monotonic()
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            section_rows = module.run(stack)
            print(f"[bench] {name} done in {time.monotonic() - t0:.1f}s", file=sys.stderr)
            rows.extend(section_rows)
        finally:
            stack.down()
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    (RESULTS / f"{stamp}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = markdown(rows, meta)
    (RESULTS / f"{stamp}.md").write_text(table)
    (RESULTS / "latest.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
