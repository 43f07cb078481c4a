"""Who waited for a CPU, and when: run-queue delay per process, sampled from outside.

On a two-core machine the client, the sink, the broker, PostgreSQL and the services share
the cores; a webhook that took 150 ms while no process's event loop stalled and no
collector paused spent that time waiting to be scheduled. ``/proc/<pid>/task/*/schedstat``
counts, per thread, the nanoseconds spent runnable but not running; summed over a
process's threads and differenced every ``EVERY_S``, it says which process waited, and
``/proc/stat`` says how busy the machine was meanwhile.

``python -m bench.cpuwait --seconds S name=PID[,PID...] ...`` samples for S seconds (or
until SIGTERM) and prints one JSON line: the samples as ``[time, busy share, {name: ms
waited}]``. It runs in its own process so that sampling costs the measured processes
nothing but the reads. ``Sampler`` starts it and reads the answer.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.stalls import JsonChild

EVERY_S = 0.1


def _waited_ns(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                total += int(task.read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the thread ended between the listing and the read
    return total


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def sample(seconds: float, groups: dict[str, list[int]]) -> list[list[Any]]:
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    until = time.monotonic() + seconds
    samples: list[list[Any]] = []
    last = {name: _waited_ns(pids) for name, pids in groups.items()}
    busy0, total0 = _cpu_times()
    next_at = time.monotonic()
    while not stop and time.monotonic() < until:
        next_at += EVERY_S
        time.sleep(max(0.0, next_at - time.monotonic()))
        now = {name: _waited_ns(pids) for name, pids in groups.items()}
        busy, total = _cpu_times()
        share = (busy - busy0) / (total - total0) if total > total0 else 0.0
        waits = {name: round((now[name] - last[name]) / 1e6, 1) for name in groups}
        samples.append([round(time.time(), 3), round(share, 2), waits])
        last, busy0, total0 = now, busy, total
    return samples


class Sampler(JsonChild):
    """``sample`` in a child process: start it, do the work, ``stop()``, ``result()``."""

    def __init__(self, seconds: float, groups: dict[str, list[int]]) -> None:
        super().__init__(
            "bench.cpuwait", "--seconds", str(seconds),
            *(f"{name}={','.join(map(str, pids))}" for name, pids in groups.items() if pids),
        )  # fmt: skip

    def result(self) -> list[list[Any]]:
        parsed: list[list[Any]] = super().result()
        return parsed


def pids_named(comm: str) -> list[int]:
    """Every process whose command name is ``comm`` (e.g. all PostgreSQL backends)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == comm:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def waits_between(
    samples: list[list[Any]], start: float, end: float
) -> tuple[dict[str, float], float]:
    """Each group's run-queue wait (ms) over the samples that overlap [start, end], and the
    machine's busiest share among them."""
    inside = [s for s in samples if start <= s[0] <= end + EVERY_S]
    waits: dict[str, float] = {}
    for _, _, by_name in inside:
        for name, ms in by_name.items():
            waits[name] = waits.get(name, 0.0) + ms
    return waits, max((s[1] for s in inside), default=0.0)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cpuwait")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("groups", nargs="+", help="name=PID[,PID...]")
    args = parser.parse_args(argv)
    groups = {
        name: [int(p) for p in pids.split(",") if p]
        for name, pids in (g.split("=", 1) for g in args.groups)
    }
    print(json.dumps(sample(args.seconds, groups)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
