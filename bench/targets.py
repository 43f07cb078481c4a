"""Slow targets: one dispatcher process delivering to 1,000 targets that answer like real
endpoints, beside the same run against targets that answer at once.

1,000 targets on loopback, one port each (the per-target unit is host:port), served by
one helper process (``tests.support.target_farm``). One subscription per target (signed,
like real ones), a real dispatcher process and a real retry scheduler (schedule
``1s,2s``). The dispatcher is warmed with one job per subscription first (its
subscription cache, a connection per target), then ``JOBS`` jobs, round-robin over the
subscriptions, are produced to the deliveries topic while it runs: a backlog it drains
as fast as it can.

The runs, one dispatcher process each, in this order:

- ``instant``: the baseline. The same helper process, the same 1,000 ports, answering at
  once: only the delay differs. (One instant sink would be a different workload: one
  target, its 64-request bound, one connection pool.)
- ``slow``: each request answers after a log-normal delay (median 150 ms, sigma 0.6,
  mean ~180 ms); 1 % hang past the delivery timeout and must come back as retries.
- both again with a 2 s delivery timeout (hangs of 3 s) instead of the default 10 s
  (hangs of 12 s): a process that let requests wait on its own busy loop would cut
  healthy targets' requests short at 2 s (it held 4,096 in flight at ~1,500 completed
  a second once, ~3 s each by Little's law). These runs measure that, not the targets.

Then the default-timeout pair again in the opposite order (slow, instant), ``PAIRS`` pairs
in all: a single instant run moved by up to a third between runs of one session, so the
ratio the issue asks for is the median of the pairs' ratios, each pair run back to back.
Five pairs, not two: pairs of one build on one day gave 75-100 % (2026-12-06), so a
median of two said more about the draw than about the code.

Then two pairs of the default shapes whose dispatcher sends nothing (instant, slow, slow,
instant): its client waits the farm's draws on a timer and answers 200
(``bench.timed_sends``). Not the target, a diagnostic: everything but the sockets still
runs, so their ratio is the part of the gap that is not the sockets'.

Then two sustained pairs (slow, instant, instant, slow) with three times the jobs, 15-40 s
of load. Five seconds flatter slow targets: a hung request holds its partition's commit
point for a whole timeout while records pile up behind it, pools keep growing to rarer
peaks, and the garbage the open requests leave is collected later. Measured with 108,000
jobs before the collector's pacing was raised (``services/dispatcher/gcpace.py``): 61 and
65 % of the instant rate in two runs, against ~84 % with 36,000 jobs. Two pairs, in both
orders: the single pair this section ran until 2026-12-07 (last, slow first) gave 65-69 %
where seven alternated pairs outside it had a median of 87 %.

Last, the same two sustained pairs without sockets. The five-second pairs without sockets
ran alike (98-106 %), which put the whole gap on the sockets; sustained, without sockets,
slow runs still delivered a sixth fewer per second (ten pairs alternated outside the
section on 2026-12-07: 83-96 %, median 85 %; no garbage collection in any window). After the runs,
``bench.inflight_floor``: an asyncio loop's CPU per job with 200, 3,000 and 10,000 jobs
in flight, each job decoding a delivery record and signing its request as the dispatcher
does (no I/O), then holding ~3.6 KB while it waits (about what a delivery holds), and
answered either in the order the jobs waited (as instant targets answer) or at random
(as slow ones do). What random order costs over the ordered run of the same count is
set beside the dispatcher's sustained gap without sockets, in µs: the part of that gap
that re-touching a job's own state, gone cold, could explain.

Deliveries/s is jobs delivered (SUCCESS rows) per second between the moments 5 % and
95 % of the jobs were delivered, so joining the group and the last hangs' retries weigh
on no run. The dispatcher's RSS is sampled every 0.25 s; its open sockets
(``/proc/<pid>/fd``) and its requests in flight (``hookstream_in_flight_deliveries``)
every second. Both readings cost the slow runs alone: reading 6,000 descriptors' links
takes ~12 ms of a core, and a whole scrape runs the process collector, which lists the
process's open files (~25 ms of the dispatcher's CPU, 4 % of it in a slow run), so the
scrape names the two gauges it reads (``?name[]=``). The CPU
of the dispatcher, of the farm and of the whole machine is sampled every 0.25 s too, and
CPU per delivery is read over the same 5 %-95 % window as the rate: over the whole load
it would count the slow runs' tail, where the dispatcher only waits for the last hangs.
Its kernel (system) part is given beside it: without sockets it is 3-5 µs a delivery,
so it tells the sockets' TCP work from the dispatcher's own code.
So is the time the dispatcher waited for a core (runnable, not running): with its CPU
share, it tells a dispatcher that was idle from one that was crowded out. And the
machine's steal (the hypervisor running another guest instead): one build's runs moved by
up to a third from one hour to the next.
The farm answers on a bare asyncio protocol; on aiohttp's server it took more of the two
cores than the dispatcher in the slow runs (see ``tests.support.target_farm``). Then every
job is accounted for: a SUCCESS row, or still retrying; each hang at a target must show
as a FAILED_ATTEMPT row followed by another attempt, and a FAILED_ATTEMPT that was not a
hang at the target is a timeout of the dispatcher's own making.

Run alone: ``python -m bench targets`` (13-18 minutes: 790 s on 2026-12-07 at 18:18).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from sqlalchemy import text

from bench import client_floor, inflight_floor
from bench.cpuwait import machine_times, run_queue_wait
from bench.delivery import body
from bench.ingest import cpu_seconds, cpu_times
from bench.stalls import Watcher
from shared.models import DEFAULT_APPLICATION_ID
from shared.records import DeliveryJob, EventRecord
from shared.topics import ensure_topics
from tests.support.dispatch import DispatchWorld
from tests.support.metrics import sample
from tests.support.procs import ServiceProcess, free_port
from tests.support.stack import IsolatedStack
from tests.support.target_farm import Delays, TargetFarm

SECTION = "targets"
TARGETS = 1000
# ~5 s of load at the ~6,000-8,000 deliveries/s this box reaches with 1,000 targets.
JOBS = int(os.environ.get("BENCH_TARGETS_N", "36000"))
# Instant/slow pairs at the default timeout; each after the first adds two runs (~80 s).
PAIRS = int(os.environ.get("BENCH_TARGETS_PAIRS", "5"))
SCHEDULE = "1s,2s"
MEDIAN_MS = 150
SIGMA = 0.6
HANG_FRACTION = 0.01
CORES = os.cpu_count() or 1
EVENT_TYPE = "order.created"
WARM_UP_TYPE = "bench.warm-up"
SAMPLE_EVERY_S = 0.25
METRICS_EVERY = 4  # samples: the in-flight gauge once a second
# Warm-up: one job per subscription; the hung ones are not waited for.
WARM_SHARE = 0.99

_RECORDED = "hookstream_deliveries_total"
_OUTCOMES = ("SUCCESS", "FAILED_ATTEMPT", "FAILURE")
_ATTEMPTED = "SELECT count(DISTINCT delivery_id) FROM delivery_attempts WHERE event_type = :t"

_INSERT_SUBSCRIPTIONS = """
INSERT INTO subscriptions (id, application_id, target_url, secret_key, event_types)
SELECT s.id, :app, s.url, 'whsec-bench-' || s.n, '{}'
FROM unnest(CAST(:ids AS uuid[]), CAST(:urls AS text[])) WITH ORDINALITY AS s(id, url, n)
"""


@dataclass(frozen=True)
class Shape:
    """One run: how the targets answer and the dispatcher's delivery timeout."""

    name: str
    timeout_s: float
    median_ms: float = 0
    hang_ms: float = 0
    sigma: float = SIGMA
    jobs: int = JOBS
    # False: the dispatcher's client sends nothing and waits the farm's draws instead
    # (``bench.timed_sends``), a diagnostic of where the gap lies.
    sockets: bool = True

    @property
    def slow(self) -> bool:
        return self.median_ms > 0

    def farm(self) -> dict[str, Any]:
        if not self.slow:
            return {}
        return {"median_ms": self.median_ms, "sigma": self.sigma,
                "hang_fraction": HANG_FRACTION, "hang_ms": self.hang_ms}  # fmt: skip

    def env(self, metrics_port: int | None = None) -> dict[str, str]:
        env = {
            "HOOKSTREAM_DELIVERY_TIMEOUT": f"{self.timeout_s:g}",
            "HOOKSTREAM_RETRY_SCHEDULE": SCHEDULE,
            "HOOKSTREAM_LOG_LEVEL": "WARNING",
        }
        if metrics_port is not None:
            env["HOOKSTREAM_METRICS_PORT"] = str(metrics_port)
        return env

    def launcher(self, probe_port: int) -> tuple[str, ...]:
        """How the dispatcher is started: under the stall probe, sending or not."""
        if self.sockets:
            return ("bench.stalls", "probe", "--port", str(probe_port))
        # The draws the farm would have been started with (none: the flags' defaults).
        return (
            "bench.timed_sends", *Delays.flags(**self.farm()), "--timeout",
            f"{self.timeout_s:g}", "--port", str(probe_port),
        )  # fmt: skip

    @property
    def settle_s(self) -> float:
        """After the last first attempt: a hang's retry comes a timeout plus the first
        tier (1 s, +20 % jitter) later; a second hang's a timeout plus 2.4 s after that."""
        return 2 * (self.timeout_s + 2.4) + 5


INSTANT = Shape("instant targets", 10)
SLOW = Shape("slow targets", 10, MEDIAN_MS, 12_000)
INSTANT_2S = Shape("instant targets, 2 s timeout", 2)
SLOW_2S = Shape("slow targets, 2 s timeout", 2, MEDIAN_MS, 3_000)
# Slow enough that the work is waiting, not CPU: what thousands of open requests cost.
# A narrower spread (0.3: one answer in 10,000 past 6 s) so that every timeout is a hang
# the farm drew, as in the other shapes; at 0.6, 0.4 % of answers would come after 10 s.
VERY_SLOW = Shape("very slow targets (median 2 s, sigma 0.3)", 10, 2_000, 12_000, 0.3)
# Sustained: three times the jobs (15-40 s of load instead of 5-13). Hung requests then hold
# their partitions' commit points for a whole timeout while more records pile up behind
# them, pools keep growing to rarer peaks, and garbage collections come in the window.
INSTANT_LONG = Shape(f"instant targets, {3 * JOBS:,} jobs", 10, jobs=3 * JOBS)
SLOW_LONG = Shape(f"slow targets, {3 * JOBS:,} jobs", 10, MEDIAN_MS, 12_000, jobs=3 * JOBS)
# The default pair again, the dispatcher's client sending nothing (``bench.timed_sends``).
INSTANT_TIMED = Shape("instant, no sockets", 10, sockets=False)
SLOW_TIMED = Shape("slow, no sockets", 10, MEDIAN_MS, 12_000, sockets=False)
# And sustained: in five-second runs the shapes ran alike without sockets (98-106 %),
# sustained ones did not (83-96 %, median 85 %, 2026-12-07), so the short pair alone put
# the whole gap on the sockets.
INSTANT_TIMED_LONG = Shape(f"instant, no sockets, {3 * JOBS:,} jobs", 10, jobs=3 * JOBS,
                           sockets=False)  # fmt: skip
SLOW_TIMED_LONG = Shape(f"slow, no sockets, {3 * JOBS:,} jobs", 10, MEDIAN_MS, 12_000,
                        jobs=3 * JOBS, sockets=False)  # fmt: skip
RUNS = (INSTANT, SLOW, INSTANT_2S, SLOW_2S, VERY_SLOW)
TIMED_RUNS = (INSTANT_TIMED, SLOW_TIMED, SLOW_TIMED, INSTANT_TIMED)
TIMED_LONG_RUNS = (SLOW_TIMED_LONG, INSTANT_TIMED_LONG, INSTANT_TIMED_LONG, SLOW_TIMED_LONG)
LONG_RUNS = (SLOW_LONG, INSTANT_LONG, INSTANT_LONG, SLOW_LONG)


def row(metric: str, value: float | int, unit: str, note: str = "") -> dict[str, Any]:
    return {"section": SECTION, "metric": metric, "value": value, "unit": unit, "note": note}


# --- the dispatcher, watched from outside -----------------------------------------------


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def sockets(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass  # closed while we looked
    return count


def machine_busy() -> tuple[float, float]:
    """CPU seconds every core of the machine spent not idle, and of those the seconds the
    hypervisor ran another guest instead (steal), so far (/proc/stat)."""
    busy, _, _, steal = machine_times()
    tick = os.sysconf("SC_CLK_TCK")
    return busy / tick, steal / tick


def metrics_url(port: int, *names: str) -> str:
    """The dispatcher's metrics restricted to ``names``: a scrape then skips the process
    collector and every other series."""
    query = "&".join(f"name[]={name}" for name in names)
    return f"http://127.0.0.1:{port}/metrics?{query}"


class CpuSample(NamedTuple):
    """Counters read together every sample, in seconds so far."""

    at: float
    dispatcher: float  # its CPU
    kernel: float  # the part of it spent in the kernel (system CPU): its sockets' work
    targets: float  # the farm's CPU
    machine: float  # every core's busy time
    waited: float  # the dispatcher's run-queue wait (runnable, not running)
    steal: float  # the machine's: the hypervisor running another guest


@dataclass
class Sampler:
    """RSS and open sockets of one process every 0.25 s, its requests in flight every
    second, in a thread (the bench's own loop is busy waiting on PostgreSQL)."""

    pid: int
    metrics_url: str
    # The targets' process, whose CPU is sampled beside the dispatcher's.
    farm_pid: int = 0
    # (time, RSS MB, sockets, requests in flight or None when not scraped, the bound)
    samples: list[tuple[float, float, int, float | None, float | None]] = field(
        default_factory=list
    )
    cpu: list[CpuSample] = field(default_factory=list)
    since: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        open_sockets = 0
        while not self._stop.wait(SAMPLE_EVERY_S):
            n += 1
            try:
                in_flight = bound = None
                if n % METRICS_EVERY == 1 or not open_sockets:
                    # Once a second: reading 6,000 descriptors' links takes ~12 ms of a core.
                    open_sockets = sockets(self.pid)
                if n % METRICS_EVERY == 0:
                    url = self.metrics_url
                    with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310
                        page = resp.read().decode()
                    in_flight = sample(page, "hookstream_in_flight_deliveries")
                    bound = sample(page, "hookstream_in_flight_limit")
                now = time.time()
                self.samples.append((now, rss_mb(self.pid), open_sockets, in_flight, bound))
                farm = cpu_seconds(self.farm_pid) if self.farm_pid else 0.0
                waited = run_queue_wait(self.pid) / 1e9
                busy, steal = machine_busy()
                user, kernel = cpu_times(self.pid)
                self.cpu.append(CpuSample(now, user + kernel, kernel, farm, busy, waited, steal))
            except OSError:
                continue  # still starting, or gone

    def cpu_between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds of the dispatcher, the targets and the whole machine (and its
        steal), and the dispatcher's run-queue wait (runnable, not running), between the
        samples nearest ``start`` and ``end`` (0.25 s apart), and the span they cover."""
        first = min(self.cpu, key=lambda c: abs(c.at - start))
        last = min(self.cpu, key=lambda c: abs(c.at - end))
        spent = {name: b - a for name, a, b in zip(CpuSample._fields, first, last, strict=True)}
        spent["span"] = spent.pop("at")
        return spent

    def mark(self) -> None:
        """Peaks count from now (after the warm-up)."""
        self.since = time.time()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def peak(self) -> dict[str, float]:
        """The scrape with the most requests in flight, and the highest RSS and socket
        count seen."""
        samples = [s for s in self.samples if s[0] >= self.since]
        scraped = [s for s in samples if s[3] is not None]
        at = max(scraped, key=lambda s: s[3] or 0.0)
        busy = [s for s in scraped if s[3]] or [(0.0, 0.0, 0, 0.0, 0.0)]
        # The adaptive bound holds jobs back when nearly every slot of it is taken.
        full = [s for s in busy if (s[3] or 0.0) >= 0.95 * (s[4] or 0.0)]
        return {
            "in_flight": at[3] or 0.0,
            "rss_at_peak": at[1],
            "sockets_at_peak": at[2],
            "rss_max": max(s[1] for s in samples),
            "sockets_max": max(s[2] for s in samples),
            "in_flight_median": statistics.median(s[3] or 0.0 for s in busy),
            "bound_median": statistics.median(s[4] or 0.0 for s in busy),
            "bound_full": len(full) / len(busy),
        }


# --- one run ---------------------------------------------------------------------------


async def _subscriptions(world: DispatchWorld, farm: TargetFarm) -> list[uuid.UUID]:
    """1,000 subscriptions, one per target (no attempts left from a previous run)."""
    subs = [uuid.uuid4() for _ in range(TARGETS)]
    async with world.engine.begin() as conn:
        await conn.execute(text("TRUNCATE delivery_attempts"))
        await conn.execute(text("DELETE FROM subscriptions"))
        await conn.execute(
            text(_INSERT_SUBSCRIPTIONS),
            {
                "app": DEFAULT_APPLICATION_ID,
                "ids": subs,
                "urls": [farm.url(n, f"/hook/{n}") for n in range(TARGETS)],
            },
        )
    return subs


async def _produce(
    world: DispatchWorld, subs: list[uuid.UUID], count: int, event_type: str = EVENT_TYPE
) -> set[str]:
    """``count`` jobs, round-robin over ``subs``, on the deliveries topic; their ids."""
    ids: set[str] = set()
    now = datetime.now(UTC)
    for start in range(0, count, 2000):
        acks = []
        for n in range(start, min(start + 2000, count)):
            event = EventRecord(uuid.uuid4(), event_type, now, "application/json", body(n))
            job = DeliveryJob.for_event(event, subs[n % len(subs)])
            ids.add(str(job.delivery_id))
            acks.append(
                await world.producer.send(
                    world.topics.deliveries, job.body, key=job.key, headers=job.headers()
                )
            )
        await asyncio.gather(*acks)
    return ids


@dataclass
class Recorded:
    """The dispatcher's own count of attempts on the record (``hookstream_deliveries_total``,
    counted once an attempt's row is written), from ``mark``.

    It tells the bench when to ask PostgreSQL whether every job was attempted. Asking
    PostgreSQL every 0.25 s, as before, cost the machine the rates are measured on more
    than the answer is worth: the exact count (distinct deliveries) took 12-14 ms at
    36,000 rows and 48 ms at 108,000 (the sustained runs), and a plain count of first
    attempts still 22-32 ms at 108,000, a parallel scan on both cores (psql's timing and
    ``EXPLAIN ANALYZE``, 2026-12-06). A filtered scrape is one counter's lines."""

    url: str
    base: float = 0.0

    async def count(self, client: httpx.AsyncClient) -> float:
        try:
            page = (await client.get(self.url)).text
        except httpx.TransportError:  # still starting: nothing on the record yet
            return self.base
        return sum(sample(page, _RECORDED, outcome=o) for o in _OUTCOMES)

    async def mark(self) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            self.base = await self.count(client)


async def _attempted(
    world: DispatchWorld,
    event_type: str,
    count: int,
    dispatcher: ServiceProcess,
    recorded: Recorded,
    timeout: float,
) -> None:
    """Until ``count`` jobs of ``event_type`` have at least one attempt row. PostgreSQL is
    asked only once the dispatcher counts as many attempts since ``recorded.mark``: every
    job's first attempt is one of them (so are retries, and the warm-up's late ones)."""
    async with asyncio.timeout(timeout), httpx.AsyncClient(timeout=5) as client:
        while (
            await recorded.count(client) - recorded.base < count
            or await world.scalar(_ATTEMPTED, t=event_type) < count
        ):
            assert dispatcher.alive(), dispatcher.log()[-3000:]
            await asyncio.sleep(0.25)


async def _settled(world: DispatchWorld, jobs: int, within: float) -> float | None:
    """Seconds until every job has a SUCCESS or FAILURE row; None if not within."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        settled = await world.scalar(
            "SELECT count(*) FROM (SELECT delivery_id FROM delivery_attempts "
            "WHERE event_type = :t GROUP BY 1 "
            "HAVING bool_or(status IN ('SUCCESS', 'FAILURE'))) AS done",
            t=EVENT_TYPE,
        )
        if settled >= jobs:
            return time.monotonic() - started
        await asyncio.sleep(0.5)
    return None


async def _load(
    stack: IsolatedStack,
    shape: Shape,
    farm: TargetFarm,
    dispatcher: ServiceProcess,
    sampler: Sampler,
    probe_port: int,
    recorded: Recorded,
) -> dict[str, Any]:
    """Warm the dispatcher, then the shape's jobs while it runs; wait for every first attempt
    and for the retries to settle. Returns the rows and timings."""
    async with DispatchWorld(stack.settings()) as world:
        subs = await _subscriptions(world, farm)
        await _produce(world, subs, TARGETS, WARM_UP_TYPE)
        await _attempted(
            world, WARM_UP_TYPE, int(TARGETS * WARM_SHARE), dispatcher, recorded, timeout=120
        )
        warm_rss = rss_mb(dispatcher.proc.pid)
        sampler.mark()
        await recorded.mark()
        farm.reset()
        watcher = Watcher(600, {"loop": f"http://127.0.0.1:{probe_port}/"})
        started = time.time()
        cpu = {"dispatcher": cpu_seconds(dispatcher.proc.pid),
               "targets": cpu_seconds(farm.proc.pid)}  # fmt: skip
        try:
            expected = await _produce(world, subs, shape.jobs)
            produced_in = time.time() - started
            await _attempted(world, EVENT_TYPE, shape.jobs, dispatcher, recorded, timeout=600)
        finally:
            watcher.stop()
        busy = time.time() - started
        stalls = watcher.result()["loop"]
        cpu = {
            "dispatcher": cpu_seconds(dispatcher.proc.pid) - cpu["dispatcher"],
            "targets": cpu_seconds(farm.proc.pid) - cpu["targets"],
        }
        settled_in = await _settled(world, shape.jobs, shape.settle_s)
        async with world.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT delivery_id, attempt_number, status, error_details, created_at "
                        "FROM delivery_attempts WHERE event_type = :t"
                    ),
                    {"t": EVENT_TYPE},
                )
            ).all()
    return {
        "rows": rows,
        "expected": expected,
        "stalls": stalls,
        "started": started,
        "warm_rss": warm_rss,
        "cpu": cpu,
        "busy": busy,
        "produced_in": produced_in,
        "settled_in": settled_in,
    }


def one_run(stack: IsolatedStack, workdir: Path, shape: Shape) -> dict[str, Any]:
    with TargetFarm(TARGETS, **shape.farm()) as farm:
        metrics_port, probe_port = free_port(), free_port()
        scheduler = ServiceProcess(stack, "retry_scheduler", log_dir=workdir, **shape.env())
        dispatcher = ServiceProcess(
            stack, "dispatcher", log_dir=workdir, **shape.env(metrics_port),
            launcher=shape.launcher(probe_port),
        )  # fmt: skip
        gauges = metrics_url(
            metrics_port, "hookstream_in_flight_deliveries", "hookstream_in_flight_limit"
        )
        sampler = Sampler(dispatcher.proc.pid, gauges, farm.proc.pid)
        sampler.start()
        try:
            recorded = Recorded(metrics_url(metrics_port, _RECORDED))
            loaded = asyncio.run(
                _load(stack, shape, farm, dispatcher, sampler, probe_port, recorded)
            )
        finally:
            sampler.stop()
            dispatcher.stop()
            scheduler.stop()
        arrivals = farm.arrivals()
        stats = farm.stats()
    logs = dispatcher.log() + scheduler.log()
    result = {
        "shape": shape,
        "arrivals": arrivals,
        "stats": stats,
        "peak": sampler.peak(),
        "tracebacks": logs.count("Traceback"),
        **loaded,
    }
    result.update(account(result))
    result["window_cpu"] = sampler.cpu_between(*result["window"])
    print(
        f"[bench] targets {shape.name}: {result['rate']:,.0f} delivered/s "
        f"({result['attempt_rate']:,.0f} first attempts/s), own timeouts "
        f"{result['own_timeouts']:,}, peak in flight {result['peak']['in_flight']:,.0f}, "
        f"median in flight {result['peak']['in_flight_median']:,.0f} under a bound of "
        f"{result['peak']['bound_median']:,.0f} (full {result['peak']['bound_full']:.0%}), "
        f"RSS {result['peak']['rss_max']:.0f} MB (warm {result['warm_rss']:.0f}), sockets "
        f"{result['peak']['sockets_max']:,}, connections at the targets {stats['connections']:,}",
        file=sys.stderr,
    )
    return result


# --- reading a run -----------------------------------------------------------------------


def _span(times: list[float], total: int) -> tuple[float, float]:
    """The moments 5 % and 95 % of ``total`` had happened (or the last one, when fewer
    than 95 % did)."""
    times = sorted(times)
    return times[total * 5 // 100], times[min(total * 95 // 100, len(times) - 1)]


def _window(times: list[float], total: int) -> tuple[float, str]:
    """Per second over ``_span``, and a note when fewer than 95 % happened."""
    lo, hi = _span(times, total)
    if len(times) > total * 95 // 100:
        return total * 0.9 / (hi - lo), ""
    done = len(times) - total * 5 // 100
    return done / (hi - lo), f"only {len(times) / total:.1%} delivered; "


def account(run: dict[str, Any]) -> dict[str, Any]:
    """Rates, and every job accounted for (see the module's docstring)."""
    expected = run["expected"]
    by_delivery: dict[str, list[tuple[float, int, str, str | None]]] = {}
    delivered: list[float] = []
    for delivery_id, attempt, status, error, created_at in run["rows"]:
        at = created_at.timestamp()
        by_delivery.setdefault(str(delivery_id), []).append((at, attempt, status, error))
        if status == "SUCCESS":
            delivered.append(at)
    rate, short = _window(delivered, len(expected))
    window = _span(delivered, len(expected))
    attempt_rate, _ = _window([min(a)[0] for a in by_delivery.values()], len(expected))
    arrivals = run["arrivals"]
    outcome: Counter[str] = Counter()
    own_timeouts = hung_not_failed = retried = duplicates = 0
    errors: Counter[str] = Counter()
    for delivery_id in expected & by_delivery.keys():
        # The n-th attempt row (in time) is the n-th request that reached the target.
        attempts = sorted(by_delivery[delivery_id])
        statuses = [status for _, _, status, _ in attempts]
        outcome[outcome_of(statuses)] += 1
        hung = [h for _, h in sorted(arrivals.get(delivery_id, []))]
        duplicates += max(0, len(hung) - len(attempts))
        for n, (_, _, status, error) in enumerate(attempts):
            was_hung = n < len(hung) and hung[n]
            if status == "FAILED_ATTEMPT":
                errors[(error or "").split(":", 1)[0][:60]] += 1
                own_timeouts += not was_hung
                retried += n + 1 < len(attempts)
            elif was_hung:
                hung_not_failed += 1
    return {
        "rate": rate,
        "window": window,
        "short": short,
        "attempt_rate": attempt_rate,
        "missing": len(expected - by_delivery.keys()),
        "outcome": dict(outcome),
        "failed_attempts": sum(errors.values()),
        "hung": run["stats"]["hung"],
        "own_timeouts": own_timeouts,
        "hung_not_failed": hung_not_failed,
        "retried": retried,
        "duplicates": duplicates,
        "errors": dict(errors.most_common(3)),
    }


def outcome_of(statuses: list[str]) -> str:
    if "SUCCESS" in statuses:
        return "success"
    return "failure" if "FAILURE" in statuses else "retrying"


# What a repeated shape reports: its rate, what it lost, and its CPU.
_REPEAT_ROWS = ("deliveries/s", "timeouts of", "jobs delivered", "dispatcher CPU")
_TIMED_ROWS = ("deliveries/s", "jobs delivered", "dispatcher CPU")


def _run_rows(run: dict[str, Any], repeat: int = 0) -> list[dict[str, Any]]:
    """A run's rows; a repeated shape's (``repeat`` ≥ 1) give its rate, what it lost and
    its CPU only."""
    shape: Shape = run["shape"]
    peak, stats, o = run["peak"], run["stats"], run["outcome"]
    window = run["window_cpu"]
    spent, in_kernel = _cpu_us(run)
    label = shape.name if not repeat else f"{shape.name}, run {repeat + 1}"
    hangs = (
        f"{stats['hung']} requests hung at the targets ({shape.hang_ms / 1000:g} s); "
        f"recorded as FAILED_ATTEMPT: {stats['hung'] - run['hung_not_failed']}, followed by "
        f"another attempt: {run['retried']:,} (of all failed attempts); "
        if shape.slow and shape.sockets
        else ""
    )
    settled = (
        f"retries settled {run['settled_in']:.1f} s after the last first attempt"
        if run["settled_in"] is not None
        else f"not settled {shape.settle_s:.0f} s after the last first attempt"
    )
    rows = [
        row(f"deliveries/s, {label}", round(run["rate"]), "deliveries/s",
            f"{run['short']}{shape.jobs:,} jobs over {TARGETS:,} targets (one port each), "
            f"timeout {shape.timeout_s:g} s: SUCCESS rows per second between 5 % and 95 % "
            f"of the jobs delivered; first attempts finished {run['attempt_rate']:,.0f}/s; "
            f"jobs produced in {run['produced_in']:.1f} s"),
        row(f"timeouts of the dispatcher's own making, {label}", run["own_timeouts"],
            "attempts",
            f"FAILED_ATTEMPT rows whose request did not hang at the target; all failed "
            f"attempts {run['failed_attempts']:,}: "
            + ("; ".join(f"{n:,} x {e!r}" for e, n in run["errors"].items()) or "none")),
        row(f"jobs delivered, {label}", o.get("success", 0), "jobs",
            f"of {shape.jobs:,}: {o.get('retrying', 0):,} still retrying, {o.get('failure', 0):,} "
            f"FAILURE, {run['missing']:,} without any attempt row (deferred or lost, not told "
            f"apart); {hangs}{run['duplicates']:,} requests beyond the attempt rows; {settled}"),
        row(f"requests in flight at peak, {label}", round(peak["in_flight"]), "requests",
            f"hookstream_in_flight_deliveries scraped every second; median while busy "
            f"{peak['in_flight_median']:,.0f}; the adaptive bound's median "
            f"{peak['bound_median']:,.0f}, full (≥ 95 %) in {peak['bound_full']:.0%} of the "
            f"scrapes; most held open at once by the targets "
            f"{stats['most_open']:,}"),
        row(f"dispatcher RSS at peak, {label}", round(peak["rss_max"]), "MB",
            f"{peak['rss_at_peak']:.0f} MB at the in-flight peak; {run['warm_rss']:.0f} MB "
            "warmed, before the load"),
        row(f"dispatcher open sockets at peak, {label}", peak["sockets_max"], "sockets",
            f"/proc/<pid>/fd entries that are sockets; {peak['sockets_at_peak']:,} at the "
            f"in-flight peak; the targets saw {stats['connections']:,} connections for "
            f"{stats['requests']:,} requests"),
        row(f"dispatcher event-loop stall, {label}", run["stalls"]["max_gap_ms"], "ms",
            f"longest gap between answers of an endpoint served by the dispatcher's own loop, "
            f"polled every 10 ms during the load; gaps over 50 ms: "
            f"{run['stalls']['over_50ms']:,}; the dispatcher counts a gap over 1 s as a stall "
            "of its own and re-sends what timed out across it ('cut short')"),
        row(f"dispatcher CPU per delivery, {label}", round(spent), "µs",
            f"while the deliveries between 5 % and 95 % were made ({window['span']:.1f} s), "
            f"{in_kernel:.0f} µs of it in the kernel (system CPU: mostly its sockets' "
            "TCP work): "
            f"dispatcher {window['dispatcher'] / window['span']:.0%} of a core, targets "
            f"process {window['targets'] / window['span']:.0%}, the whole machine "
            f"{window['machine'] / window['span'] / CORES:.0%} of its {CORES} cores (steal "
            f"{window['steal'] / window['span'] / CORES:.1%}: the hypervisor running another "
            f"guest); the dispatcher waited for a core {window['waited'] / window['span']:.0%} "
            "of the time (runnable, not running: /proc/<pid>/task/*/schedstat); over "
            f"the whole load ({run['busy']:.0f} s, the hangs' tail included) "
            f"{run['cpu']['dispatcher'] / shape.jobs * 1e6:.0f} µs"),
    ]  # fmt: skip
    if not shape.sockets:
        # No request reached the farm: its counts (hangs, connections) say nothing here.
        return [r for r in rows if r["metric"].startswith(_TIMED_ROWS)]
    return [r for r in rows if r["metric"].startswith(_REPEAT_ROWS)] if repeat else rows


def _cpu_us(run: dict[str, Any]) -> tuple[float, float]:
    """The dispatcher's CPU per delivery over the 5 %-95 % window, and its kernel part."""
    window = run["window_cpu"]
    delivered = run["rate"] * window["span"]
    return window["dispatcher"] / delivered * 1e6, window["kernel"] / delivered * 1e6


def rows_for(runs: dict[Shape, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for repeats in runs.values():
        for n, run in enumerate(repeats):
            rows += _run_rows(run, n)
    for instant, slow in (
        (INSTANT, SLOW), (INSTANT_2S, SLOW_2S), (INSTANT_TIMED, SLOW_TIMED),
        (INSTANT_LONG, SLOW_LONG), (INSTANT_TIMED_LONG, SLOW_TIMED_LONG),
    ):  # fmt: skip
        pairs = [
            (late["rate"] / fast["rate"] * 100, late["started"] < fast["started"])
            for fast, late in zip(runs[instant], runs[slow], strict=True)
        ]
        ratio = statistics.median(r for r, _ in pairs)
        if instant is INSTANT:
            target = f"target ≥ 90 % {'(met)' if ratio >= 90 else '(NOT met)'}; "
        elif instant is INSTANT_LONG:
            target = "sustained (three times the jobs); "
        elif not instant.sockets:
            target = (
                "a diagnostic, not the target: the dispatcher's client sends nothing and "
                "waits the farm's draws instead (bench.timed_sends), so this is the gap "
                "without sockets; "
            )
        else:
            target = "the issue's target is for the default timeout; "
        jobs = f", {instant.jobs:,} jobs" if instant.jobs != JOBS else ""
        jobs += "" if instant.sockets else ", no sockets"
        each = (
            f"median of {len(pairs)} back-to-back pairs ("
            + ", ".join(f"{r:.1f} % {'slow' if first else 'instant'} first" for r, first in pairs)
            + "); "
            if len(pairs) > 1
            else ""
        )
        cpu = {
            name: [statistics.median(_cpu_us(r)[i] for r in runs[shape]) for i in (0, 1)]
            for name, shape in (("slow", slow), ("instant", instant))
        }
        spent = (
            f"the medians' CPU per delivery: {cpu['slow'][0]:.0f} µs slow, {cpu['slow'][1]:.0f} "
            f"of it in the kernel, against {cpu['instant'][0]:.0f} µs and "
            f"{cpu['instant'][1]:.0f}; "
        )
        rows.append(
            row(f"slow / instant, timeout {instant.timeout_s:g} s{jobs}", round(ratio, 1), "%",
                f"{target}{each}{spent}same dispatcher settings, same 1,000 ports; slow: "
                f"log-normal median {MEDIAN_MS} ms sigma {SIGMA}, {HANG_FRACTION:.0%} hang "
                f"{slow.hang_ms / 1000:g} s")
        )  # fmt: skip
    over = {
        name: (r["peak"]["rss_at_peak"] - r["warm_rss"], r["peak"]["in_flight"])
        for name, r in (("very slow", runs[VERY_SLOW][0]), ("slow", runs[SLOW][0]))
    }
    per_request = {name: mb * 1024 / max(n, 1) for name, (mb, n) in over.items()}
    rows.append(
        row("memory per open request", round(per_request["very slow"], 1), "KB",
            f"{VERY_SLOW.name}: (RSS at the in-flight peak - RSS warmed) / requests in "
            f"flight = {over['very slow'][0]:.0f} MB / {over['very slow'][1]:,.0f}, an upper "
            "bound: it also counts the jobs fetched and queued behind them; slow targets "
            f"(150 ms), where far fewer are open at once: {over['slow'][0]:.0f} MB / "
            f"{over['slow'][1]:,.0f} = {per_request['slow']:.1f} KB")
    )  # fmt: skip
    for repeats in runs.values():
        for run in repeats:
            if run["tracebacks"]:
                rows.append(row(f"tracebacks, {run['shape'].name}", run["tracebacks"], "count",
                                "dispatcher or retry scheduler log"))  # fmt: skip
    return rows


def run(stack: IsolatedStack) -> list[dict[str, Any]]:
    asyncio.run(ensure_topics(stack.settings(retry_schedule=SCHEDULE)))
    with tempfile.TemporaryDirectory(prefix="bench-targets-") as tmp:
        runs: dict[Shape, list[dict[str, Any]]] = {}
        for shape in (
            *RUNS, *(SLOW, INSTANT) * (PAIRS - 1), *TIMED_RUNS, *LONG_RUNS, *TIMED_LONG_RUNS
        ):  # fmt: skip
            runs.setdefault(shape, []).append(one_run(stack, Path(tmp), shape))
    floor = {
        (client, shape): client_floor.in_child(client, shape)
        for client in client_floor.CLIENTS
        for shape in client_floor.SHAPES
    }
    held = {
        (count, order): inflight_floor.in_child(count, order)
        for count in inflight_floor.COUNTS
        for order in inflight_floor.ORDERS
    }
    return rows_for(runs) + floor_rows(floor) + inflight_rows(held, runs)


def inflight_rows(
    held: dict[tuple[int, str], dict[str, Any]], runs: dict[Shape, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """An asyncio loop's CPU per job, the dispatcher's own per-job code on each, with more
    jobs in flight and answered in order or at random (``bench.inflight_floor``), beside
    the dispatcher's sustained gap without sockets: how much of that gap re-touching a
    job's own state can explain."""
    spent = {
        name: statistics.median(_cpu_us(r)[0] for r in runs[shape])
        for name, shape in (("slow", SLOW_TIMED_LONG), ("instant", INSTANT_TIMED_LONG))
    }
    gap = (
        f"the dispatcher's sustained runs without sockets spent "
        f"{spent['slow'] - spent['instant']:+.0f} µs per delivery slow against instant "
        f"({spent['slow']:.0f} against {spent['instant']:.0f})"
    )
    rows = []
    for (count, order), result in held.items():
        note = (
            f"{result['rate']:,.0f} jobs/s; answered {_ORDER_NOTES[order]}; each job decodes "
            "a delivery record and signs its request (DeliveryJob.decode, request_headers) "
            f"for one of {inflight_floor.SUBSCRIPTIONS:,} subscriptions; "
            f"{result['bytes_per_job'] / 1024:.1f} KB held per waiting job (tracemalloc: the "
            "job, its headers and request bytes, three coroutines and a future); no I/O, "
            "broker or database"
        )
        ordered = held[count, inflight_floor.ORDERS[0]]
        if result is not ordered:
            note += (
                f"; {result['cpu_us'] - ordered['cpu_us']:+.1f} µs per job against the same "
                f"count answered in order, where {gap}"
            )
        rows.append(
            row(f"asyncio loop, decode and sign (no I/O), CPU per job, {count:,} in flight, "
                f"{order}", round(result["cpu_us"], 1), "µs", note)
        )  # fmt: skip
    return rows


_ORDER_NOTES = {
    "ordered": "in the order they waited, as instant targets answer",
    "random": "in random order, as slow targets answer (log-normal delays)",
}


def floor_rows(floor: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Each bare client's CPU per request on the same farm (``bench.client_floor``): the
    share of the slow/instant gap that is the HTTP client's own. ``hookstream`` is the
    dispatcher's (``http1.py``), ``aiohttp`` the one it replaced."""
    rows = []
    for client in client_floor.CLIENTS:
        instant, wide, slow = (floor[client, shape] for shape in client_floor.SHAPES)
        busy = slow["rate"] * slow["cpu_us"] / 1e6
        rows += [
            row(f"bare {client} client, CPU per request, instant targets",
                round(instant["cpu_us"]), "us",
                f"{instant['rate']:,.0f}/s with {client_floor.INSTANT_OPEN} open; no "
                "broker, database or signing"),
            row(f"bare {client} client, CPU per request, instant targets, "
                f"{client_floor.SLOW_OPEN:,} open", round(wide["cpu_us"]), "us",
                f"{wide['rate']:,.0f}/s, {wide['connections']:,} connections: "
                f"{wide['cpu_us'] - instant['cpu_us']:+.0f} µs per request for holding "
                "that many open, without waiting"),
            row(f"bare {client} client, CPU per request, slow targets", round(slow["cpu_us"]),
                "us", f"{slow['rate']:,.0f}/s with {client_floor.SLOW_OPEN:,} open, "
                f"{slow['connections']:,} connections; the process busy {busy:.0%} of a core"),
            row(f"bare {client} client, instant/slow CPU per request",
                round(100 * instant["cpu_us"] / slow["cpu_us"], 1), "%",
                "an upper bound on this client's share of the gap, not what a CPU-bound "
                "process would reach: the slow loop also waits, and a loop woken for a few "
                "answers at a time spends more per request than a saturated one"),
        ]  # fmt: skip
    return rows
