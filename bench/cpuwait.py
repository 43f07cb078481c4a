"""Who waited for a CPU, and when: run-queue delay per process, sampled from outside.

On a two-core machine the client, the sink, the broker, PostgreSQL and the services share
the cores; a webhook that took 150 ms while no process's event loop stalled and no
collector paused spent that time waiting to be scheduled. ``/proc/<pid>/task/*/schedstat``
counts, per thread, the nanoseconds spent runnable but not running; summed over a
process's threads and differenced every ``EVERY_S``, it says which process waited, and
``/proc/stat`` says how busy the machine was meanwhile. ``/proc/<pid>/stat`` says which
process ran: its CPU time; ``/proc/stat`` adds ``softirq`` (network processing no
process was charged for) and ``steal`` (the hypervisor ran another guest), and the busy
time left over is ``other`` (processes outside the groups, kernel threads, this sampler).

``python -m bench.cpuwait --seconds S name=PID[,PID...] name=^PID ...`` samples for S
seconds (or until SIGTERM) and prints one JSON line: the samples as ``[time, busy share,
{name: ms waited}, {name: ms of CPU used}]``. ``^PID`` is that process and its children,
listed again at every sample: PostgreSQL's postmaster starts autovacuum workers mid-run,
and one that lived between two listings would count as ``other``. It runs in its own
process so that sampling costs the measured processes nothing but the reads. ``Sampler``
starts it and reads the answer.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.stalls import JsonChild

EVERY_S = 0.1
_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def run_queue_wait(pid: int) -> int:
    """ns the process's threads have spent runnable but not running, so far."""
    waited = 0
    for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            waited += int(task.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended between the listing and the read
    return waited


def _counters(pid: int) -> tuple[int, float]:
    """(ns spent runnable but not running, ms of CPU used) by the process, all threads."""
    waited = run_queue_wait(pid)
    try:
        # The command name may hold spaces: the fields start after its ")".
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        used = (int(fields[11]) + int(fields[12])) * _TICK_MS
    except (OSError, IndexError, ValueError):
        used = 0.0  # the process ended
    return waited, used


def machine_times() -> tuple[int, int, int, int]:
    """(busy, total, softirq, steal) jiffies of the whole machine. Softirq is mostly the
    loopback network stack when no process was charged for it; steal is time the
    hypervisor gave to someone else while this machine wanted it."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8]), fields[6], fields[7]


def children(pid: int) -> list[int]:
    """``pid`` and the processes it started (one read per thread of it)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(c) for c in task.read_text().split()]
        except OSError:
            continue
    return found


def sample(seconds: float, groups: dict[str, list[int] | str]) -> list[list[Any]]:
    """``groups``: a name's PIDs, or ``"^PID"`` for that process and its children."""
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    def listed() -> dict[str, list[int]]:
        return {
            name: children(int(pids[1:])) if isinstance(pids, str) else pids
            for name, pids in groups.items()
        }

    signal.signal(signal.SIGTERM, _stop)
    until = time.monotonic() + seconds
    samples: list[list[Any]] = []
    pids = listed()
    # Per process, so that one which starts mid-run (counted from its birth) or ends
    # (no longer counted) does not make its group's totals jump.
    last = {pid: _counters(pid) for group in pids.values() for pid in group}
    busy0, total0, softirq0, steal0 = machine_times()
    next_at = time.monotonic()
    while not stop and time.monotonic() < until:
        next_at += EVERY_S
        time.sleep(max(0.0, next_at - time.monotonic()))
        pids = listed()
        now = {pid: _counters(pid) for group in pids.values() for pid in group}
        busy, total, softirq, steal = machine_times()
        share = (busy - busy0) / (total - total0) if total > total0 else 0.0
        waits: dict[str, float] = {}
        used: dict[str, float] = {}
        for name, group in pids.items():
            waited_ns, ran_ms = 0, 0.0
            for pid in group:
                before = last.get(pid, (0, 0.0))
                waited_ns += now[pid][0] - before[0]
                ran_ms += now[pid][1] - before[1]
            waits[name], used[name] = round(waited_ns / 1e6, 1), round(ran_ms)
        used["softirq"] = round((softirq - softirq0) * _TICK_MS)
        used["steal"] = round((steal - steal0) * _TICK_MS)
        used["other"] = round(max((busy - busy0) * _TICK_MS - sum(used.values()), 0.0))
        samples.append([round(time.time(), 3), round(share, 2), waits, used])
        last, busy0, total0, softirq0, steal0 = now, busy, total, softirq, steal
    return samples


class Sampler(JsonChild):
    """``sample`` in a child process: start it, do the work, ``stop()``, ``result()``."""

    def __init__(self, seconds: float, groups: dict[str, list[int] | str]) -> None:
        super().__init__(
            "bench.cpuwait", "--seconds", str(seconds),
            *(
                f"{name}={pids if isinstance(pids, str) else ','.join(map(str, pids))}"
                for name, pids in groups.items()
                if pids
            ),
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
) -> tuple[dict[str, float], dict[str, float], float]:
    """Over the samples that overlap [start, end]: each group's run-queue wait (ms), its
    CPU used (ms, with ``other``), and the machine's busiest share among them."""
    inside = [s for s in samples if start <= s[0] <= end + EVERY_S]
    waits: dict[str, float] = {}
    used: dict[str, float] = {}
    for _, _, waited, ran in inside:
        for name, ms in waited.items():
            waits[name] = waits.get(name, 0.0) + ms
        for name, ms in ran.items():
            used[name] = used.get(name, 0.0) + ms
    return waits, used, max((s[1] for s in inside), default=0.0)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cpuwait")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("groups", nargs="+", help="name=PID[,PID...] or name=^PID")
    args = parser.parse_args(argv)
    groups: dict[str, list[int] | str] = {
        name: pids if pids.startswith("^") else [int(p) for p in pids.split(",") if p]
        for name, pids in (g.split("=", 1) for g in args.groups)
    }
    print(json.dumps(sample(args.seconds, groups)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
