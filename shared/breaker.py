"""Per-target circuit breaker, shared by every dispatcher process through Redis (design §6, §8).

A target is ``host:port`` (``target_of(url)``): one dead endpoint behind many subscriptions
trips one breaker, and its jobs stop tying up connections that healthy targets need.

States, as a pure machine (``decide`` / ``observe``; unit-tested with an injected clock):

- **closed**: every request goes. Failures (connection errors, timeouts, 5xx) are counted
  as a run that starts at the first one; ``failure_threshold`` failures within ``window``
  of the run's start open the breaker. Any success resets the run.
- **open** for ``cool_down``: ``allow`` says no. The dispatcher then sends the job to the
  next tier without making the call and without burning an attempt.
- **half-open**: one probe at a time goes. It holds a lease of ``probe_lease`` (longer
  than a delivery timeout), so a probe lost with a crashed process frees the slot again.
  A success closes the breaker, a failure opens it for another ``cool_down``.

A success closes the breaker from any state: a target that answered is alive, even when
the answer belongs to a request sent before the breaker opened.

Sharing. The state lives in a Redis hash per target, ``<prefix>:breaker:<host:port>``, and
one Lua script applies each transition atomically (one round trip, no WATCH retries when
many processes hit the same dead target at once). The Lua mirrors ``decide``/``observe``
line for line; an integration test runs both on the same random histories and compares.
Keys expire (``ttl``) so forgotten targets leave nothing behind; an expired key reads as
closed.

Time is the callers' wall clock, passed to the script: processes on different hosts
disagree by their clock skew (milliseconds under NTP) against cool-downs of seconds.

Redis is an accelerator (design §8). Each process keeps a bounded local view: a target
seen closed with no failures (or open within its cool-down) less than ``sync_interval`` ago
is answered without a round trip, so a healthy target costs nothing and another process's
decision reaches this one within ``sync_interval``; a target in trouble is asked about
every time. When Redis fails, the same machine runs on the
local view alone (each process then decides for itself) and Redis is tried again after
``redis_retry``. Delivery never waits on a dead Redis for more than one client timeout.

Coalescing. A target in trouble is asked about every time, and a dead one answers 64
concurrent requests with 64 timeouts at once: one round trip each exhausted the Redis
client's pool and sent the breaker to its local fallback. So a process makes at most one
round trip per target at a time (a per-target lock): callers of ``allow`` that arrive
while a lookup is out share its answer (only its first caller can be the half-open
probe), and ``record`` calls that arrive while a round trip is out are summed into the
next one (a success, then N failures: one script call).

Healthy targets are re-read together. A view seen closed goes stale after
``sync_interval``, and with a thousand targets answering in a trickle that was a thousand
script calls a second per process (~0.2 per delivery in ``bench targets``), growing with
the number of targets rather than the deliveries. So a stale closed view, or a target
not yet seen, is read back with every other one that went stale meanwhile: one
read-only script call over all their keys, one batch at a time, as a group commit does.
A target closed with failures on the books is asked about every time, in the same
batches (against slow targets, where one hang leaves a failure until the next success,
one-target calls for those cost ~13 µs per delivery in ``bench targets``). Only an open
or half-open target, and a success that resets failures, take the full one-target
transition.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.logging import get_logger
from shared.loopref import LoopRef
from shared.metrics import BREAKERS_OPEN

log = get_logger("breaker")

Clock = Callable[[], float]
R = TypeVar("R")
Op = Literal["allow", "ok", "fail"]


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    # Five failures in a row within a minute: a flaky target that fails one request in
    # three essentially never trips it ((1/3)^5 < 0.5%), a dead one trips within seconds.
    failure_threshold: int = 5
    window: float = 60.0
    # How long jobs skip the target before a probe. Shorter than the first tier (10 s),
    # so a target that comes back loses at most one tier's worth of retries.
    cool_down: float = 30.0
    # The probe's lease: longer than the delivery timeout (10 s) plus a margin.
    probe_lease: float = 15.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if min(self.window, self.cool_down, self.probe_lease) <= 0:
            raise ValueError("window, cool_down and probe_lease must be positive")

    @property
    def ttl_ms(self) -> int:
        """Redis key lifetime: twice the longest span a stored state matters for."""
        return math.ceil(2 * max(self.window, self.cool_down + self.probe_lease) * 1000)


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0  # length of the current run of failures
    since: float = 0.0  # when that run began
    opened_at: float = 0.0  # when the breaker last opened
    probe_at: float = 0.0  # when the current half-open probe was let through


CLOSED = BreakerSnapshot()
_Answer = tuple[bool, BreakerSnapshot]  # allowed, and the state after the call


def decide(
    snap: BreakerSnapshot, now: float, config: BreakerConfig
) -> tuple[bool, BreakerSnapshot]:
    """May a request go to the target now? Returns the answer and the next state."""
    if snap.state is BreakerState.CLOSED:
        return True, snap
    if snap.state is BreakerState.OPEN:
        if now - snap.opened_at >= config.cool_down:
            return True, replace(snap, state=BreakerState.HALF_OPEN, probe_at=now)
        return False, snap
    if now - snap.probe_at >= config.probe_lease:  # the probe was lost: let another go
        return True, replace(snap, probe_at=now)
    return False, snap


def observe(snap: BreakerSnapshot, ok: bool, now: float, config: BreakerConfig) -> BreakerSnapshot:
    """The state after a request to the target succeeded (``ok``) or failed."""
    if ok:
        return CLOSED
    if snap.state is BreakerState.OPEN:
        return snap  # a late failure of a request sent before it opened
    if snap.state is BreakerState.HALF_OPEN:
        return replace(snap, state=BreakerState.OPEN, opened_at=now)
    if snap.failures == 0 or now - snap.since > config.window:
        failures, since = 1, now
    else:
        failures, since = snap.failures + 1, snap.since
    if failures >= config.failure_threshold:
        return replace(snap, state=BreakerState.OPEN, failures=failures, since=since, opened_at=now)
    return replace(snap, failures=failures, since=since)


def target_of(url: str) -> str:
    """``host:port`` of a URL, the unit a breaker protects: ``https://A.example/x`` →
    ``a.example:443``; IPv6 hosts keep their brackets."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme.lower(), 0)
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


def breaker_key(topic_prefix: str, target: str) -> str:
    return f"{topic_prefix}:breaker:{target}"


# One transition, atomically. Mirrors decide()/observe() above; keep the two in step (the
# integration test compares them on random histories). Timestamps are stored as the
# strings the client sent, so nothing is lost to Lua's number formatting.
#   KEYS[1]  the target's hash
#   ARGV     op ("allow" | "record"), now, threshold, window, cool_down, probe_lease, ttl_ms,
#            then for "record": success first ("1"/"0"), number of failures after it
# Returns {state, failures, since, opened_at, probe_at, allowed (1/0)}.
_SCRIPT = """
local op, now_s = ARGV[1], ARGV[2]
local now = tonumber(now_s)
local threshold, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local cool_down, lease, ttl_ms = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local f = redis.call('HMGET', KEYS[1], 'state', 'failures', 'since', 'opened_at', 'probe_at')
local state, failures = f[1] or 'closed', tonumber(f[2]) or 0
local since, opened_at, probe_at = f[3] or '0', f[4] or '0', f[5] or '0'
local allowed, changed = 1, false

if op == 'allow' then
  if state == 'open' then
    if now - tonumber(opened_at) >= cool_down then
      state, probe_at, changed = 'half_open', now_s, true
    else
      allowed = 0
    end
  elseif state == 'half_open' then
    if now - tonumber(probe_at) >= lease then
      probe_at, changed = now_s, true
    else
      allowed = 0
    end
  end
else
  -- record: a success (ARGV[8] = '1') first, then ARGV[9] failures, one at a time.
  if ARGV[8] == '1' and (state ~= 'closed' or failures ~= 0) then
    state, failures, since, opened_at, probe_at, changed = 'closed', 0, '0', '0', '0', true
  end
  for _ = 1, tonumber(ARGV[9]) do
    if state == 'half_open' then
      state, opened_at, changed = 'open', now_s, true
    elseif state == 'closed' then
      if failures == 0 or now - tonumber(since) > window then
        failures, since = 1, now_s
      else
        failures = failures + 1
      end
      if failures >= threshold then
        state, opened_at = 'open', now_s
      end
      changed = true
    end
  end
end

if changed then
  if state == 'closed' and failures == 0 then
    redis.call('DEL', KEYS[1])
  else
    redis.call('HSET', KEYS[1], 'state', state, 'failures', failures, 'since', since,
      'opened_at', opened_at, 'probe_at', probe_at)
    redis.call('PEXPIRE', KEYS[1], ttl_ms)
  end
end
return {state, failures, since, opened_at, probe_at, allowed}
"""


# The stored state of many targets, read only: {state, failures, since, opened_at,
# probe_at} per key, false (nil) for a field a missing key does not have.
_READ_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('HMGET', key, 'state', 'failures', 'since', 'opened_at', 'probe_at')
end
return out
"""


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _snapshot(fields: list[bytes | str | None]) -> BreakerSnapshot:
    """State, failures, since, opened_at, probe_at as a script returns them (the
    transition script fills in defaults; the read script leaves a missing field nil)."""
    state, failures, since, opened_at, probe_at = (None if v is None else _text(v) for v in fields)
    return BreakerSnapshot(
        state=BreakerState(state or "closed"),
        failures=int(failures or 0),
        since=float(since or 0),
        opened_at=float(opened_at or 0),
        probe_at=float(probe_at or 0),
    )


class RedisBreakerStore:
    """The shared state: one atomic transition per call."""

    def __init__(self, redis: Redis, topic_prefix: str, config: BreakerConfig) -> None:
        self._prefix = topic_prefix
        self._config = config
        self._script = redis.register_script(_SCRIPT)
        self._read_script = redis.register_script(_READ_SCRIPT)

    async def read(self, targets: list[str]) -> list[BreakerSnapshot]:
        """The stored state of each target, in one round trip (no transition)."""
        keys = [breaker_key(self._prefix, target) for target in targets]
        rows = await self._read_script(keys=keys, args=[])
        return [_snapshot(row) for row in rows]

    async def apply(
        self, op: Op, target: str, now: float, failures: int = 1
    ) -> tuple[bool, BreakerSnapshot]:
        """``failures`` applies to "fail" only: that many failures in one round trip."""
        reset, count = (1, 0) if op == "ok" else (0, failures if op == "fail" else 0)
        return await self._run("allow" if op == "allow" else "record", target, now, reset, count)

    async def record(
        self, target: str, now: float, *, reset: bool, failures: int
    ) -> tuple[bool, BreakerSnapshot]:
        """A success (``reset``) then ``failures`` failures, in one round trip."""
        return await self._run("record", target, now, int(reset), failures)

    async def _run(
        self, op: str, target: str, now: float, reset: int, count: int
    ) -> tuple[bool, BreakerSnapshot]:
        c = self._config
        args: list[str | int | float] = [
            op,
            repr(now),
            c.failure_threshold,
            c.window,
            c.cool_down,
            c.probe_lease,
            c.ttl_ms,
            reset,
            count,
        ]
        raw = await self._script(keys=[breaker_key(self._prefix, target)], args=args)
        return _text(raw[5]) == "1", _snapshot(raw[:5])


@dataclass(slots=True)
class _Outcomes:
    """Outcomes waiting for their target's round trip: a success (``reset``), then
    ``failures`` failures. ``sent`` resolves once they are applied."""

    sent: asyncio.Future[None]
    reset: bool = False
    failures: int = 0


@dataclass(slots=True)
class _Lane:
    """One target's traffic to Redis: one round trip at a time."""

    lock: asyncio.Lock
    lookup: asyncio.Future[None] | None = None  # an ``allow`` round trip under way
    waiting: _Outcomes | None = None  # ``record`` calls not yet sent
    users: int = 0


@dataclass(slots=True)
class _Known:
    snapshot: BreakerSnapshot
    synced_at: float  # when Redis said so; -inf for a state decided locally


class CircuitBreaker:
    """``allow(target)`` before a request, ``record(target, ok)`` after it.

    ``redis=None`` runs on the local view only (one process, or tests).
    """

    def __init__(
        self,
        redis: Redis | None,
        topic_prefix: str,
        config: BreakerConfig | None = None,
        *,
        clock: Clock = time.time,
        sync_interval: float = 1.0,
        redis_retry: float = 5.0,
        max_targets: int = 10_000,
    ) -> None:
        self.config = config or BreakerConfig()
        self._store = RedisBreakerStore(redis, topic_prefix, self.config) if redis else None
        self._clock = clock
        self._sync_interval = sync_interval
        self._redis_retry = redis_retry
        self._redis_down_until = -math.inf
        # Most recently used last; the least recently used target is forgotten first.
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._max_targets = max_targets
        self._not_closed: set[str] = set()
        self._lanes: dict[str, _Lane] = {}
        # Targets waiting for the next batched read, and the task reading batches.
        self._reading: dict[str, asyncio.Future[BreakerSnapshot | None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._loop = LoopRef()

    async def allow(self, target: str) -> bool:
        """False while the target's breaker is open (or its one probe is out)."""
        if self.closed_lately(target):
            return True
        now = self._clock()
        known = self._known.get(target)
        if known is not None and now - known.synced_at < self._sync_interval:
            snap = known.snapshot
            if snap.state is BreakerState.OPEN and now - snap.opened_at < self.config.cool_down:
                return False
        # Closed, possibly with failures on the books (a slow target's one hang): still asked
        # about every time, but in the batched read, not a one-target transition each.
        if (
            known is None or known.snapshot.state is BreakerState.CLOSED
        ) and await self._still_closed(target, now, failures_ok=True):
            return True
        lane = self._enter(target)
        try:
            if lane.lookup is not None:
                # Another caller is asking: its answer serves this one too, except that
                # only that caller may be the half-open probe.
                await asyncio.shield(lane.lookup)
                known = self._known.get(target)
                if known is not None and known.synced_at > -math.inf:
                    return known.snapshot.state is BreakerState.CLOSED
                return self._decide_locally(target, self._clock())
            lookup = lane.lookup = self._loop().create_future()
            try:
                async with lane.lock:
                    now = self._clock()
                    shared = await self._shared(
                        lambda store: store.apply("allow", target, now), now
                    )
            finally:
                lane.lookup = None
                lookup.set_result(None)
            if shared is not None:
                allowed, snap = shared
                self._remember(target, snap, now)
                return allowed
            return self._decide_locally(target, now)
        finally:
            self._leave(target, lane)

    def closed_lately(self, target: str, slack: float = 0.0) -> bool:
        """Whether this process saw ``target`` plainly closed (no failure on the books) less
        than ``sync_interval`` ago: ``allow`` then says yes, and ``record`` drops a success,
        without a round trip. Callers on a hot path ask this first and skip the call.

        ``slack`` (at most one more ``sync_interval``) dates the question back: a success
        asks whether the view was fresh when its request began. Against slow targets the
        view otherwise went stale during the request for ~1 success in 5 (~180 ms mean
        against a 1 s view), and each such success waited for a batched Redis read that
        told it nothing new. The price is the one the skipped success already pays: a run
        of failures another process began within that time is not reset by it."""
        known = self._known.get(target)
        return (
            known is not None
            and known.snapshot is CLOSED
            and self._clock() - known.synced_at
            < self._sync_interval + min(slack, self._sync_interval)
        )

    async def record(self, target: str, ok: bool, *, failures: int = 1) -> None:
        """Count the outcome of a request: ``ok`` for a 2xx-class answer; a failure may
        stand for ``failures`` in a row (one round trip for all of them)."""
        if ok and self.closed_lately(target):
            # Nothing to reset as far as we know: skip the round trip on the hot path. A
            # run of failures another process began in the last sync_interval is not
            # reset by this success; it still needs threshold failures within window.
            return
        now = self._clock()
        known = self._known.get(target)
        stale_closed = ok and known is not None and known.snapshot is CLOSED
        if stale_closed and await self._still_closed(target, now):
            return  # nothing anywhere for this success to reset
        lane = self._enter(target)
        try:
            outcomes = lane.waiting
            first = outcomes is None
            if outcomes is None:
                sent = self._loop().create_future()
                outcomes = lane.waiting = _Outcomes(sent)
            if ok:  # a success wipes out the failures before it
                outcomes.reset, outcomes.failures = True, 0
            else:
                outcomes.failures += failures
            if not first:
                await asyncio.shield(outcomes.sent)  # the first caller sends them all
                return
            try:
                async with lane.lock:
                    if lane.waiting is outcomes:
                        lane.waiting = None  # later outcomes go with the next round trip
                    await self._send(target, outcomes)
            finally:
                if lane.waiting is outcomes:
                    lane.waiting = None
                outcomes.sent.set_result(None)
        finally:
            self._leave(target, lane)

    async def _still_closed(self, target: str, now: float, *, failures_ok: bool = False) -> bool:
        """Whether Redis, read in a batch with other stale targets, says ``target`` is
        plainly closed (and then remembers so); with ``failures_ok``, closed with a run of
        failures too (an ``allow``: the answer is yes either way, and nothing changes).
        False when it is not, or when Redis is unavailable: the caller takes the
        one-target path, which handles both."""
        if self._store is None or now < self._redis_down_until:
            return False
        before = self._known.get(target)
        future = self._reading.get(target)
        if future is None:
            future = self._reading[target] = self._loop().create_future()
            if self._reader is None:
                self._reader = asyncio.create_task(self._read_batches(), name="breaker-read")
        snap = await asyncio.shield(future)
        closed = snap is not None and (
            snap.state is BreakerState.CLOSED if failures_ok else snap == CLOSED
        )
        if not closed:
            return False
        assert snap is not None
        current = self._known.get(target)
        if current is not before and (current is None or current.snapshot != snap):
            # A transition of this process's (a failure, the breaker opening) landed
            # while the batch was out, newer than what it read. The same state
            # remembered meanwhile is not one: it is another caller of this batch (a
            # slow target has several requests asking at once), which took this answer.
            return False
        self._remember(target, snap, now)
        return True

    async def _read_batches(self) -> None:
        """Read what is waiting, one batch at a time: targets that go stale while a batch
        is out make the next one, so a busy process makes few, larger reads."""
        try:
            while self._reading:
                batch, self._reading = self._reading, {}
                snaps: list[BreakerSnapshot] | None = None
                try:
                    read = functools.partial(RedisBreakerStore.read, targets=list(batch))
                    snaps = await self._shared(read, self._clock())
                except Exception as exc:  # callers take the one-target path instead
                    log.warning("breaker states not read", targets=len(batch), error=repr(exc))
                finally:
                    answers: list[BreakerSnapshot | None] = (
                        list(snaps) if snaps else [None] * len(batch)
                    )
                    for future, snap in zip(batch.values(), answers, strict=True):
                        if not future.done():
                            future.set_result(snap)
        finally:
            self._reader = None
            for future in self._reading.values():  # only left when cancelled
                if not future.done():
                    future.set_result(None)
            self._reading.clear()

    async def _send(self, target: str, outcomes: _Outcomes) -> None:
        now = self._clock()
        reset, failures = outcomes.reset, outcomes.failures

        shared = await self._shared(
            lambda store: store.record(target, now, reset=reset, failures=failures), now
        )
        if shared is not None:
            self._remember(target, shared[1], now)
            return
        snap = self._local(target)
        if reset:
            snap = observe(snap, True, now, self.config)
        for _ in range(failures):
            snap = observe(snap, False, now, self.config)
        self._remember(target, snap, -math.inf)

    def _decide_locally(self, target: str, now: float) -> bool:
        allowed, snap = decide(self._local(target), now, self.config)
        self._remember(target, snap, -math.inf)
        return allowed

    def _enter(self, target: str) -> _Lane:
        lane = self._lanes.get(target)
        if lane is None:
            lane = self._lanes[target] = _Lane(asyncio.Lock())
        lane.users += 1
        return lane

    def _leave(self, target: str, lane: _Lane) -> None:
        lane.users -= 1
        if lane.users == 0 and self._lanes.get(target) is lane:
            del self._lanes[target]

    def state(self, target: str) -> BreakerState:
        """This process's latest view (for logs, metrics and tests)."""
        return self._local(target).state

    def _local(self, target: str) -> BreakerSnapshot:
        known = self._known.get(target)
        return known.snapshot if known is not None else CLOSED

    async def _shared(
        self, call: Callable[[RedisBreakerStore], Awaitable[R]], now: float
    ) -> R | None:
        """``call``'s answer from Redis, or None while Redis is unavailable."""
        if self._store is None or now < self._redis_down_until:
            return None
        try:
            return await call(self._store)
        except (RedisError, OSError) as exc:
            # Calls in flight together fail together (one outage, or one stall of this
            # process past the client timeout): the first to fail says so, once.
            first = self._redis_down_until <= now
            self._redis_down_until = max(self._redis_down_until, now + self._redis_retry)
            if first:
                log.warning(
                    "breaker state is local to this process: Redis unavailable",
                    error=repr(exc),
                    retry_in=self._redis_retry,
                )
            return None

    def _remember(self, target: str, snap: BreakerSnapshot, synced_at: float) -> None:
        before = self._local(target).state
        if snap == CLOSED:
            # One object for "plainly closed": the hot path's checks compare identity, not
            # five fields (~2.4 checks per delivery against slow targets).
            snap = CLOSED
        self._known[target] = _Known(snap, synced_at)
        self._known.move_to_end(target)
        if len(self._known) > self._max_targets:
            forgotten, _ = self._known.popitem(last=False)
            self._not_closed.discard(forgotten)
        if snap.state is BreakerState.CLOSED:
            self._not_closed.discard(target)
        else:
            self._not_closed.add(target)
        BREAKERS_OPEN.set(len(self._not_closed))
        if snap.state is not before:
            log.info(
                "circuit breaker state",
                target=target,
                state=snap.state.value,
                was=before.value,
                failures=snap.failures,
            )
