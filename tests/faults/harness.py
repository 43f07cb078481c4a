"""The fault-injection harness: Hookstream as real processes on a private stack, real local
HTTP targets, a steady load of signed webhooks, and a checker that accounts for every 202.

One ``FaultRun`` per scenario:

- **services**: ``python -m services.ingest``, one or two ``services.dispatcher`` and one
  ``services.retry_scheduler`` (the cluster scenarios: 2 ingest, 3 dispatchers, 2
  schedulers, the load round-robin over the ingest processes), on a ``PrivateNamespace``
  (fresh database and topic prefix on a private PostgreSQL/Redis/Kafka the scenario may
  stop), retry schedule 1s,2s,3s, publish timeout 2 s (ingest answers 503 quickly when
  the broker is gone).
- **targets**: aiohttp servers in the test's loop, one port per subscription (the circuit
  breaker is per host:port). Six healthy ones (200 after 20 ms), one flaky (500 on the
  first attempt of an eighth of its deliveries, so retries run all the time), one
  refusing (always 422: FAILURE + dead letter after four attempts, without tripping the
  breaker). ``storm`` makes the healthy and flaky ones answer 500. Every answer is
  recorded per ``webhook-id`` once it is sent back.
- **load**: ``RATE`` requests a second on a fixed schedule, never waiting for answers:
  ``POST /ingest/{id}`` signed (most; 1 in 50 to the refusing target), ``POST /events``
  fan-out (1 in 20, seven matching subscriptions), a targeted event type the subscription
  does not take (1 in 20, must be 200 filtered), ``Idempotency-Key`` on one in ten. Every
  answer is kept with its send and answer times.
- **checker**: every delivery a 202 promised (its ``delivery_id``, or ``uuid5(event_id,
  subscription)`` for each matching subscription of a fan-out) must end in exactly one
  terminal state: answered 2xx at its target (with a SUCCESS row and the exact body bytes),
  or a FAILURE row with a dead letter. Extra 2xx answers for one id are duplicates:
  counted and printed, allowed (at-least-once).

Waits poll conditions under deadlines; the only fixed sleeps are the outages themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import signal
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from services.dispatcher.delivery_stage import COPY_DROPPED
from shared.records import delivery_id_for
from shared.signing import hub_signature
from shared.topics import Topics
from tests.support.broker import IngestServer, TopicProbe
from tests.support.private_stack import PrivateNamespace
from tests.support.procs import ServiceProcess
from tests.support.waiting import wait_until

RATE = 80.0  # requests per second
WARM_UP = 800  # 202s before the fault (~10 s)
TAIL = 800  # 202s after recovery (~10 s): new traffic must flow through the healed system
SESSION_TIMEOUT = 10.0  # shared.kafka.make_consumer's session_timeout_ms
PUBLISH_TIMEOUT = 2.0
DRAIN_DEADLINE = 150.0  # from the end of the load until every promise is kept

EVENT = "invoice.paid"
FANOUT_EVENT = "order.created"
UNWANTED = "user.deleted"

TARGET_DELAY = 0.02  # each answer takes this long: requests are in flight
HEALTHY = 6

# Every scenario's line, printed again in the terminal summary (tests/faults/conftest.py).
REPORT_LINES: list[str] = []


# --- subscriptions and targets ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sub:
    id: uuid.UUID
    name: str
    secret: str
    event_types: tuple[str, ...]

    def wants(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types


PLAN: list[tuple[str, tuple[str, ...]]] = [
    *((f"ok-{i}", ()) for i in range(HEALTHY)),
    ("flaky", (EVENT, FANOUT_EVENT)),
    ("refusing", (EVENT,)),
]


@dataclass(frozen=True, slots=True)
class Hit:
    target: str
    status: int
    at: float  # time.monotonic() when the answer was sent


class Targets:
    """The webhook receivers, each on its own port, every answer recorded.

    Own ports because the dispatcher's circuit breaker is per ``host:port``: endpoints
    that share one would trip each other's breaker.
    """

    def __init__(self) -> None:
        self.storm = False
        self.hits: dict[str, list[Hit]] = defaultdict(list)
        self.bodies: dict[str, bytes] = {}
        self.anonymous = 0  # requests without a webhook-id: none expected
        self.in_flight = 0  # requests received and not answered yet
        self._ports: dict[str, int] = {}
        self._runners: list[web.AppRunner] = []

    async def __aenter__(self) -> Targets:
        for name, _ in PLAN:
            app = web.Application(client_max_size=4 * 1024 * 1024)
            app.router.add_post("/hook", functools.partial(self._handle, name))
            runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
            await runner.setup()
            self._runners.append(runner)
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self._ports[name] = runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for runner in self._runners:
            await runner.cleanup()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._ports[name]}/hook"

    def _status(self, name: str, webhook_id: str) -> int:
        if name == "refusing":
            # A 4xx is retried like a 5xx but tells the breaker the target is alive, so
            # this one ends every delivery as FAILURE + dead letter after four attempts.
            return 422
        if self.storm:
            return 500
        if name == "flaky":
            first = not self.hits.get(webhook_id)
            return 500 if first and int(webhook_id[:8], 16) % 8 == 0 else 200
        return 200

    async def _handle(self, name: str, request: web.Request) -> web.Response:
        body = await request.read()
        webhook_id = request.headers.get("webhook-id")
        if webhook_id is None:
            self.anonymous += 1
            return web.Response(status=400)
        self.in_flight += 1
        try:
            await asyncio.sleep(TARGET_DELAY)
        finally:
            self.in_flight -= 1
        # Decided and recorded only now: a sender that died while we waited never got an
        # answer, so that attempt does not count as delivered.
        status = self._status(name, webhook_id)
        self.hits[webhook_id].append(Hit(name, status, time.monotonic()))
        self.bodies.setdefault(webhook_id, body)
        return web.Response(status=status, text="ok" if status < 300 else "no")

    def delivered(self) -> set[str]:
        return {i for i, hits in self.hits.items() if any(200 <= h.status < 300 for h in hits)}

    def delivered_since(self, since: float) -> set[str]:
        return {
            i
            for i, hits in self.hits.items()
            if any(200 <= h.status < 300 and h.at >= since for h in hits)
        }

    def successes(self, webhook_id: str) -> int:
        return sum(1 for h in self.hits.get(webhook_id, ()) if 200 <= h.status < 300)


# --- load ---------------------------------------------------------------------------


@dataclass(slots=True)
class Answer:
    n: int
    kind: str  # targeted | fanout | unwanted
    sent_at: float  # time.monotonic()
    body: bytes
    sub: Sub | None
    url: str = ""  # the ingest process it went to
    answered_at: float = 0.0
    status: int | None = None  # None: no HTTP answer at all
    error: str | None = None
    promised: tuple[str, ...] = ()  # delivery ids a 202 promised
    id_mismatch: bool = False


class Load:
    """A steady stream of webhooks into ingest, every answer kept."""

    def __init__(
        self, ingest: IngestServer | list[IngestServer], subs: list[Sub], rate: float = RATE
    ) -> None:
        ingests = ingest if isinstance(ingest, list) else [ingest]
        # Round-robin over these, as a load balancer would; a killed process leaves the
        # rotation (``drop``) and its unanswered requests are not counted as unexpected.
        self.urls = [i.url for i in ingests]
        self.dropped: set[str] = set()
        self.auth = ingests[0].auth
        self.subs = subs
        self.rate = rate
        self.answers: list[Answer] = []
        self.fanout_subs = [s for s in subs if s.wants(FANOUT_EVENT)]
        self._deliverable = [s for s in subs if s.name != "refusing"]
        self._refusing = next(s for s in subs if s.name == "refusing")
        self._flaky = next(s for s in subs if s.name == "flaky")
        self._rng = random.Random(8)
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=400),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        self._runner = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner
            self._runner = None
        if self._tasks:
            await asyncio.wait(self._tasks)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        n = 0
        while not self._stopping.is_set():
            task = asyncio.create_task(self._one(n))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += 1
            delay = started + n / self.rate - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)

    def _request(self, n: int) -> tuple[Answer, str, dict[str, str]]:
        pad = "x" * self._rng.randrange(0, 400)
        if n % 20 == 0:
            body = b'{"n": %d, "kind": "fanout", "pad": "%s"}' % (n, pad.encode())
            headers = {**self.auth, "x-webhook-event": FANOUT_EVENT}
            answer = Answer(n, "fanout", time.monotonic(), body, None)
            path = "/events"
        else:
            if n % 20 == 1:
                sub, event_type, kind = self._flaky, UNWANTED, "unwanted"
            elif n % 50 == 2:
                sub, event_type, kind = self._refusing, EVENT, "targeted"
            else:
                sub, event_type, kind = self._rng.choice(self._deliverable), EVENT, "targeted"
            # Compact and spaced JSON alike: bodies must arrive byte for byte.
            body = b'{"n":%d,  "sub": "%s", "pad":"%s"}' % (n, sub.name.encode(), pad.encode())
            headers = {
                "x-webhook-event": event_type,
                "x-hub-signature-256": hub_signature(sub.secret, body),
            }
            answer = Answer(n, kind, time.monotonic(), body, sub)
            path = f"/ingest/{sub.id}"
        headers["content-type"] = "application/json"
        if n % 10 == 3:
            headers["Idempotency-Key"] = f"fault-{n}-{uuid.uuid4().hex}"
        return answer, path, headers

    def drop(self, url: str) -> None:
        """Send nothing more to ``url`` (its process was killed, as a health check would)."""
        self.dropped.add(url)
        self.urls = [u for u in self.urls if u != url]

    async def _one(self, n: int) -> None:
        answer, path, headers = self._request(n)
        answer.url = self.urls[n % len(self.urls)]
        self.answers.append(answer)
        assert self._session is not None
        try:
            async with self._session.post(
                answer.url + path, data=answer.body, headers=headers
            ) as resp:
                payload = await resp.read()
                answer.status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            answer.error = f"{type(exc).__name__}: {exc}"
            answer.answered_at = time.monotonic()
            return
        answer.answered_at = time.monotonic()
        if answer.status != 202:
            return
        data = json.loads(payload)
        event_id = uuid.UUID(data["event_id"])
        if answer.kind == "fanout":
            answer.promised = tuple(str(delivery_id_for(event_id, s.id)) for s in self.fanout_subs)
        else:
            assert answer.sub is not None
            answer.promised = (data["delivery_id"],)
            answer.id_mismatch = data["delivery_id"] != str(
                delivery_id_for(event_id, answer.sub.id)
            )

    # --- what happened ----------------------------------------------------------------

    def accepted(self) -> list[Answer]:
        return [a for a in self.answers if a.status == 202]

    def accepted_count(self, since: float = 0.0) -> int:
        return sum(1 for a in self.answers if a.status == 202 and a.answered_at >= since)

    def sent_between(self, start: float, end: float) -> list[Answer]:
        """Requests sent after ``start`` and answered before ``end``."""
        return [
            a
            for a in self.answers
            if a.sent_at >= start and a.status is not None and a.answered_at <= end
        ]

    def cut_off(self) -> list[Answer]:
        """Requests that died with an ingest process a scenario killed: no answer, no promise."""
        return [a for a in self.answers if a.status is None and a.url in self.dropped]

    def unexpected(self) -> list[Answer]:
        """Answers that are neither a kept promise, a filter, nor a 503."""
        wrong = []
        for a in self.answers:
            if a.status is None:
                if a.answered_at and a.url not in self.dropped:  # finished without an answer
                    wrong.append(a)
                continue
            allowed = (200, 503) if a.kind == "unwanted" else (202, 503)
            if a.status not in allowed or a.id_mismatch:
                wrong.append(a)
        return wrong


# --- the services -------------------------------------------------------------------


def log_events(proc: ServiceProcess, event: str) -> list[dict[str, Any]]:
    found = []
    for line in proc.log().splitlines():
        if f'"{event}"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            found.append(record)
    return found


def assignments(proc: ServiceProcess) -> list[list[str]]:
    return [r.get("partitions", []) for r in log_events(proc, "partitions assigned")]


class Services:
    """The Hookstream processes of one run; ``retired`` holds the ones a scenario killed."""

    def __init__(self, ns: PrivateNamespace, log_dir: Path) -> None:
        self.ns = ns
        self.log_dir = log_dir
        self.env = {"HOOKSTREAM_PUBLISH_TIMEOUT": str(PUBLISH_TIMEOUT)}
        self.ingests: list[IngestServer] = []
        self.dispatchers: list[ServiceProcess] = []
        self.schedulers: list[ServiceProcess] = []
        self.retired: list[ServiceProcess] = []
        topics = Topics.from_settings(ns.settings())
        settings = ns.settings()
        self.dispatch_partitions = settings.events_partitions + settings.deliveries_partitions
        self.retry_partitions = len(topics.retry_topics) * settings.retry_partitions

    @property
    def ingest(self) -> IngestServer | None:
        return self.ingests[0] if self.ingests else None

    @property
    def scheduler(self) -> ServiceProcess | None:
        return self.schedulers[0] if self.schedulers else None

    def start_ingest(self) -> IngestServer:
        ingest = IngestServer(self.ns, self.log_dir, **self.env)
        self.ingests.append(ingest)
        ingest.wait_healthy()
        return ingest

    def start_dispatcher(self) -> ServiceProcess:
        proc = ServiceProcess(self.ns, "dispatcher", log_dir=self.log_dir, **self.env)
        self.dispatchers.append(proc)
        return proc

    def start_scheduler(self) -> ServiceProcess:
        scheduler = ServiceProcess(self.ns, "retry_scheduler", log_dir=self.log_dir, **self.env)
        self.schedulers.append(scheduler)
        return scheduler

    def kill(self, proc: ServiceProcess) -> None:
        """SIGKILL and reap; the process moves to ``retired``."""
        proc.signal(signal.SIGKILL)
        proc.proc.wait(10)
        proc.stop()
        if proc in self.dispatchers:
            self.dispatchers.remove(proc)
        if proc in self.schedulers:
            self.schedulers.remove(proc)
        self.ingests = [i for i in self.ingests if i.proc is not proc]
        self.retired.append(proc)

    def running(self) -> list[ServiceProcess]:
        return [i.proc for i in self.ingests] + self.dispatchers + self.schedulers

    def dead(self) -> list[str]:
        return [p.name for p in self.running() if not p.alive()]

    def dispatchers_cover_all(self) -> bool:
        """Every dispatcher has an assignment and together they hold every partition."""
        latest = [assignments(p) for p in self.dispatchers]
        if not all(latest):
            return False
        held = [name for a in latest for name in a[-1]]
        return len(set(held)) == self.dispatch_partitions == len(held)

    def scheduler_ready(self) -> bool:
        """Every scheduler has an assignment and together they hold every retry partition."""
        latest = [assignments(p) for p in self.schedulers]
        if not latest or not all(latest):
            return False
        held = [name for a in latest for name in a[-1]]
        return len(set(held)) == self.retry_partitions == len(held)

    def copies_dropped(self) -> int:
        """Copies of retry jobs the dispatchers dropped unsent (attempt claims)."""
        procs = self.dispatchers + [p for p in self.retired if p.name == "dispatcher"]
        return sum(len(log_events(p, COPY_DROPPED)) for p in procs)

    def tails(self, chars: int = 2500) -> str:
        procs = self.running() + self.retired
        return "\n".join(f"--- {p.name} ({p.log_path.name})\n{p.log()[-chars:]}" for p in procs)

    def stop_all(self) -> dict[str, int]:
        """SIGTERM each running process; returns the exit codes of those that did not stop
        cleanly. uvicorn re-raises the SIGTERM it handled once it has shut down, so ingest
        stops cleanly with -15 after logging "stopped"."""
        unclean: dict[str, int] = {}
        for proc in self.running():
            code = proc.stop()
            if proc.name == "ingest" and code == -signal.SIGTERM:
                code = 0 if log_events(proc, "stopped") else code
            if code != 0:
                unclean[f"{proc.name}:{proc.proc.pid}"] = code
        return unclean


# --- the database and the dead letters ----------------------------------------------


async def query(ns: PrivateNamespace, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(ns.dsn, timeout=5)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def ids_with_status(ns: PrivateNamespace, status: str) -> set[str]:
    rows = await query(
        ns, "SELECT DISTINCT delivery_id FROM delivery_attempts WHERE status = $1", status
    )
    return {str(r["delivery_id"]) for r in rows}


async def dead_letter_ids(ns: PrivateNamespace) -> set[str]:
    settings = ns.settings()
    async with TopicProbe(settings.kafka_bootstrap, Topics.from_settings(settings).dlq) as probe:
        await probe.mark_beginning()
        records = await probe.new_records(timeout=30)
    return {dict(r.headers)["delivery_id"].decode() for r in records}


# --- the checker --------------------------------------------------------------------


@dataclass(slots=True)
class Report:
    scenario: str
    accepted: int = 0  # 202 answers
    promised: int = 0  # deliveries those 202s promised (fan-out: one per matching sub)
    delivered: int = 0  # promised ids answered 2xx at their target
    failed: int = 0  # promised ids ended FAILURE (with a dead letter)
    lost: int = 0  # promised ids with no terminal state
    duplicates: int = 0  # extra 2xx answers for a promised id
    filtered: int = 0
    unavailable: int = 0  # 503 answers
    unexpected: int = 0  # any other answer, or none at all
    unpromised: int = 0  # delivered ids no 202 promised (a 503 whose record landed late)
    unrecorded: int = 0  # delivered without a SUCCESS row
    both: int = 0  # delivered and also FAILURE
    no_dead_letter: int = 0  # FAILURE after an attempt, without a dead letter
    body_mismatch: int = 0
    drain: float = 0.0  # seconds from the end of the load until every promise was kept
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"scenario={self.scenario} accepted={self.accepted} delivered={self.delivered} "
            f"lost={self.lost} duplicates={self.duplicates} failed={self.failed} "
            f"promised={self.promised} filtered={self.filtered} unavailable={self.unavailable} "
            f"unexpected={self.unexpected} unpromised={self.unpromised} "
            f"drain={self.drain:.0f}s seconds={self.seconds:.0f}"
        )

    def problems(self) -> list[str]:
        checks = {
            "lost": self.lost,
            "unexpected answers": self.unexpected,
            "delivered without a SUCCESS row": self.unrecorded,
            "delivered and FAILURE": self.both,
            "FAILURE without a dead letter": self.no_dead_letter,
            "body not byte for byte": self.body_mismatch,
        }
        found = [f"{name}: {n}" for name, n in checks.items() if n]
        if not self.accepted:
            found.append("nothing was accepted")
        return found


async def check(
    scenario: str,
    ns: PrivateNamespace,
    targets: Targets,
    load: Load,
    services: Services,
    *,
    started: float,
) -> Report:
    """Wait (bounded) until every promise is kept, then account for all of it."""
    report = Report(scenario)
    accepted = load.accepted()
    report.accepted = len(accepted)
    report.filtered = sum(1 for a in load.answers if a.status == 200)
    report.unavailable = sum(1 for a in load.answers if a.status == 503)
    wrong = load.unexpected()
    report.unexpected = len(wrong)
    report.notes += [f"unexpected answer: {a}" for a in wrong[:5]]
    cut_off = load.cut_off()
    if cut_off:
        report.notes.append(f"{len(cut_off)} requests died with a killed ingest (no answer)")
    body_of: dict[str, bytes] = {}
    for a in accepted:
        for delivery_id in a.promised:
            body_of[delivery_id] = a.body
    promised = set(body_of)
    report.promised = len(promised)

    failures: set[str] = set()

    async def all_terminal() -> bool:
        nonlocal failures
        if promised - targets.delivered() - failures:
            failures = await ids_with_status(ns, "FAILURE")
        return not promised - targets.delivered() - failures

    def pending_details() -> str:
        pending = sorted(promised - targets.delivered() - failures)
        return f"{len(pending)} pending, e.g. {pending[:5]}\n{services.tails()}"

    try:
        report.drain = await wait_until(
            all_terminal,
            timeout=DRAIN_DEADLINE,
            what="every promised delivery to end",
            every=0.5,
        )
    except AssertionError:
        report.drain = DRAIN_DEADLINE  # what is still pending is counted as lost below
    delivered = targets.delivered()
    pending = promised - delivered - failures
    report.lost = len(pending)
    if pending:
        sample = sorted(pending)[:5]
        rows = await query(
            ns,
            "SELECT delivery_id, attempt_number, status, status_code, error_details "
            "FROM delivery_attempts WHERE delivery_id = ANY($1::uuid[]) ORDER BY created_at",
            [uuid.UUID(i) for i in sample],
        )
        report.notes.append(f"lost, e.g. {sample}; their attempt rows: {[dict(r) for r in rows]}")

    # Bookkeeping catches up: SUCCESS rows for what the targets answered, dead letters for
    # what ended FAILURE after an attempt.
    ours = promised & delivered
    successes: set[str] = set()

    async def rows_written() -> bool:
        nonlocal successes
        successes = await ids_with_status(ns, "SUCCESS")
        return ours <= successes

    with contextlib.suppress(AssertionError):
        await wait_until(rows_written, timeout=30, what="SUCCESS rows", every=0.5)
    report.unrecorded = len(ours - successes)

    failed = promised & failures
    attempted_failures = failed
    if failed:
        skipped = await query(
            ns,
            "SELECT DISTINCT delivery_id FROM delivery_attempts WHERE status = 'FAILURE' "
            "AND error_details LIKE 'not delivered:%'",
        )
        attempted_failures = failed - {str(r["delivery_id"]) for r in skipped}
    dead: set[str] = set()

    async def dead_lettered() -> bool:
        nonlocal dead
        dead = await dead_letter_ids(ns)
        return attempted_failures <= dead

    with contextlib.suppress(AssertionError):
        await wait_until(dead_lettered, timeout=30, what="dead letters", every=1.0)
    report.no_dead_letter = len(attempted_failures - dead)

    report.delivered = len(ours)
    report.failed = len(failed - delivered)
    report.both = len(failed & delivered)
    report.duplicates = sum(max(0, targets.successes(i) - 1) for i in ours)
    report.unpromised = len(delivered - promised)
    report.body_mismatch = sum(1 for i in ours if targets.bodies.get(i) != body_of[i])
    if targets.anonymous:
        report.unexpected += targets.anonymous
        report.notes.append(f"{targets.anonymous} target requests without webhook-id")
    report.seconds = time.monotonic() - started
    return report


# --- one scenario -------------------------------------------------------------------


class FaultRun:
    """Targets, services and load for one scenario; ``finish`` checks and reports."""

    def __init__(
        self,
        scenario: str,
        ns: PrivateNamespace,
        log_dir: Path,
        *,
        ingests: int = 1,
        dispatchers: int = 1,
        schedulers: int = 1,
    ) -> None:
        self.scenario = scenario
        self.ns = ns
        self.services = Services(ns, log_dir)
        self.targets = Targets()
        self.subs: list[Sub] = []
        self.load: Load | None = None
        self._ingests = ingests
        self._dispatchers = dispatchers
        self._schedulers = schedulers
        self._started = time.monotonic()
        self.notes: list[str] = []

    async def __aenter__(self) -> FaultRun:
        self._started = time.monotonic()
        await self.targets.__aenter__()
        try:
            ingests = [
                await asyncio.to_thread(self.services.start_ingest) for _ in range(self._ingests)
            ]
            self.subs = await self._subscribe(ingests[0])
            # Dispatchers start after the subscriptions exist, so their first cache load
            # has every one of them and fan-out matching is known in advance.
            for _ in range(self._dispatchers):
                self.services.start_dispatcher()
            for _ in range(self._schedulers):
                self.services.start_scheduler()
            await wait_until(
                lambda: self.services.dispatchers_cover_all() and self.services.scheduler_ready(),
                timeout=60,
                what="dispatchers and retry scheduler to hold their partitions",
                details=self.services.tails,
            )
            self.load = Load(ingests, self.subs)
            self.load.start()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        if self.load is not None:
            await self.load.stop()
        await asyncio.to_thread(self.services.stop_all)
        await self.targets.__aexit__(None, None, None)

    async def _subscribe(self, ingest: IngestServer) -> list[Sub]:
        subs = []
        async with aiohttp.ClientSession(headers=ingest.auth) as http:
            for name, event_types in PLAN:
                secret = f"whsec-{name}-{uuid.uuid4().hex}"
                async with http.post(
                    f"{ingest.url}/subscriptions/",
                    json={
                        "target_url": self.targets.url(name),
                        "secret_key": secret,
                        "event_types": list(event_types),
                    },
                ) as resp:
                    assert resp.status == 201, await resp.text()
                    created = await resp.json()
                subs.append(Sub(uuid.UUID(created["id"]), name, secret, event_types))
        return subs

    # --- phases ---------------------------------------------------------------------

    @property
    def traffic(self) -> Load:
        assert self.load is not None
        return self.load

    async def warm_up(self, accepted: int = WARM_UP) -> None:
        """Until ``accepted`` 202s and some deliveries: the fault hits a busy system."""
        await wait_until(
            lambda: (
                self.traffic.accepted_count() >= accepted
                and len(self.targets.delivered()) >= accepted // 2
            ),
            timeout=60,
            what=f"{accepted} webhooks accepted before the fault",
            details=self.services.tails,
        )

    async def tail(self, since: float, accepted: int = TAIL) -> None:
        """Until ``accepted`` more 202s after ``since``: new traffic after recovery."""
        await wait_until(
            lambda: self.traffic.accepted_count(since) >= accepted,
            timeout=90,
            what=f"{accepted} webhooks accepted after recovery",
            details=self.services.tails,
        )

    async def wait_delivering_since(self, since: float, what: str, timeout: float = 90) -> float:
        """Until the targets answer 2xx to something after ``since``; returns the wait."""
        return await wait_until(
            lambda: bool(self.targets.delivered_since(since)),
            timeout=timeout,
            what=what,
            details=self.services.tails,
        )

    async def finish(self) -> Report:
        """Stop the load, check every promise, make sure every process stops cleanly."""
        await self.traffic.stop()
        report = await check(
            self.scenario,
            self.ns,
            self.targets,
            self.traffic,
            self.services,
            started=self._started,
        )
        dead = self.services.dead()
        if dead:
            report.notes.append(f"processes that died on their own: {dead}")
        tails = self.services.tails()
        if copies := self.services.copies_dropped():
            report.notes.append(f"{copies} copies of retry jobs dropped unsent (attempt claims)")
        bad_exits = await asyncio.to_thread(self.services.stop_all)
        if bad_exits:
            report.notes.append(f"non-zero exit codes: {bad_exits}")
        report.notes += self.notes
        line = report.line()
        REPORT_LINES.append(line)
        print(f"\n{line}")
        for note in report.notes:
            print(f"  {note}")
        problems = report.problems()
        if dead:
            problems.append(f"died: {dead}")
        if bad_exits:
            problems.append(f"exit codes: {bad_exits}")
        assert not problems, f"{line}\n{problems}\n{report.notes}\n{tails}"
        return report
