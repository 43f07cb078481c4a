"""Delivery stage: one job from ``<prefix>.deliveries`` → one HTTP attempt → bookkeeping.

``DeliveryStage.run`` returns once everything the attempt implies is durable: the
attempt row is committed and any retry or dead-letter record is acknowledged. Only then
may the caller count the job's offset as finished.

Jobs whose subscription was deleted or deactivated since fan-out are not sent: they end
as a FAILURE row (no status code, "not delivered: …") and no dead letter, because
nothing was attempted. Refused targets (SSRF guard), 410 Gone and the last failed
attempt end as FAILURE with a dead letter.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from yarl import URL

from services.dispatcher.attempts import AttemptRow, AttemptWriter, attempt_row
from services.dispatcher.breaker_gate import BreakerGate
from services.dispatcher.claims import AttemptClaims, claim_ttl
from services.dispatcher.delivery import (
    Decision,
    Outcome,
    decide,
    outcome_of_error,
    outcome_of_response,
    request_headers,
)
from services.dispatcher.http1 import Http1Client
from services.dispatcher.limits import TargetLimits
from services.dispatcher.ordered import OrderedQueues, Ticket
from services.dispatcher.publishing import OutRecord, Publisher
from services.dispatcher.rates import StartRates
from services.dispatcher.sender import excerpt_text, post, post_traced
from services.dispatcher.stalls import LoopStalls, ZombieFence
from services.dispatcher.streaks import Streak
from shared import tracing
from shared.breaker import target_of
from shared.logging import get_logger
from shared.matching import unavailable_reason
from shared.metrics import (
    ATTEMPT_SECONDS,
    COPIES_DROPPED,
    DELIVERIES,
    DLQ,
    IN_FLIGHT,
    IN_FLIGHT_LIMIT,
    RETRIES,
)
from shared.models import AttemptStatus, Subscription
from shared.records import DeliveryJob
from shared.retry_policy import next_retry
from shared.settings import Settings
from shared.signing import standard_webhooks_key
from shared.subscriptions import SubscriptionCache, SubscriptionView, notify_changed
from shared.topics import Topics
from shared.urlsafety import UnsafeTargetError, check_url

log = get_logger("dispatcher.delivery")

_DELIVERIES = {status: DELIVERIES.labels(status.value) for status in AttemptStatus}

# Keys for the Standard Webhooks signature, one per distinct secret (a base64 decode
# for whsec_ secrets); 4,096 subscriptions' worth of secrets stay hot.
_signing_key = lru_cache(maxsize=4096)(standard_webhooks_key)

_TARGET_CACHE_SIZE = 10_000
# A job waiting for a target's slot is deferred unattempted once the target has finished
# nothing for this long: a dead target would otherwise keep its queue, and its
# partitions' flow-control budget, for a whole delivery timeout (10 s) until its breaker
# opens. A busy target that keeps answering is waited for.
LANE_PATIENCE = 5.0
# A timed-out attempt whose request had less than this share of the timeout in running
# time was cut short by a stall of this process (stalls.py), not by the target.
_FAIR_SHARE = 0.9
# One breaker cool-down (shared/breaker.py BreakerConfig: 30 s): an overdue job's target
# has had its half-open probe before deferrals start costing attempts.
DEFERRAL_GRACE = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class Target:
    """A subscription's URL, parsed and checked once. ``key`` is its ``host:port``: the
    unit of the per-target bound and of the circuit breaker."""

    url: URL
    key: str
    refused: str | None = None


# The log event of a dropped copy (tests and the fault harness count it).
COPY_DROPPED = "copy of a retry dropped"


class CopyOfAttempt(Exception):
    """Another copy of this job made (or is making) its attempt, or ended its delivery
    (claims.py); the message says which."""


class Progress:
    """Set by the stage when the request starts: until then a job may be cancelled freely
    (on a rebalance) because nothing has reached the target."""

    __slots__ = ("sending",)

    def __init__(self) -> None:
        self.sending = False


@dataclass(slots=True)
class DeliveryStage:
    settings: Settings
    topics: Topics
    cache: SubscriptionCache
    http: Http1Client
    publisher: Publisher
    attempts: AttemptWriter
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis
    breaker: BreakerGate | None = None
    stalls: LoopStalls | None = None
    fence: ZombieFence | None = None
    # Ordered subscriptions' queues (ordered.py); set once the stage exists.
    ordered: OrderedQueues | None = None
    limits: TargetLimits = dataclasses.field(init=False)
    claims: AttemptClaims = dataclasses.field(init=False)
    rates: StartRates = dataclasses.field(init=False, default_factory=StartRates)
    _targets: dict[str, Target] = dataclasses.field(init=False, default_factory=dict)
    _can_defer: bool = dataclasses.field(init=False, default=True)
    _patience: timedelta = dataclasses.field(init=False, default=timedelta(0))

    def __post_init__(self) -> None:
        # Deferring needs a tier to wait on; with no retries at all, jobs just queue.
        self._can_defer = bool(self.settings.retry_schedule)
        # How long a job may be deferred without using attempts: its whole schedule, with
        # jitter, plus a grace for the breaker's probe (~25 h with the default schedule).
        schedule = sum(self.settings.retry_schedule, timedelta())
        self._patience = schedule * (1 + self.settings.retry_jitter) + DEFERRAL_GRACE
        self.limits = TargetLimits(
            self.settings.max_in_flight,
            self.settings.max_in_flight_per_target,
            patience=LANE_PATIENCE if self._can_defer else None,
            adaptive=self.settings.adaptive_in_flight,
        )
        self.claims = AttemptClaims(
            self.redis,
            self.settings.topic_prefix,
            claim_ttl(self.settings.retry_schedule, self.settings.retry_jitter),
        )
        # Read at scrape time rather than updated twice per delivery.
        limits = self.limits
        IN_FLIGHT.set_function(lambda: limits.in_flight)
        IN_FLIGHT_LIMIT.set_function(lambda: limits.limit)

    def ticket(self, job: DeliveryJob) -> Ticket | None:
        """The job's place in its subscription's intake order, taken when the consumer
        reads it (offset order); None without ordered delivery."""
        return None if self.ordered is None else self.ordered.order.ticket(job.subscription_id)

    def run(
        self,
        job: DeliveryJob,
        progress: Progress,
        ticket: Ticket | None = None,
        source: str | None = None,
    ) -> Coroutine[Any, Any, None]:
        """The job's handling, to await. ``source`` names the record the job was read from
        (partition and offset): a retry claims its attempt with it (claims.py).

        Without tracing this is ``_run``'s coroutine itself, not one awaiting it: a
        backlog holds thousands of jobs in progress, and the extra coroutine was a few
        hundred bytes each and one more frame to pass through at every resumption."""
        if not tracing.enabled:
            return self._run(job, progress, ticket, source)
        return self._run_traced(job, progress, ticket, source)

    async def _run_traced(
        self, job: DeliveryJob, progress: Progress, ticket: Ticket | None, source: str | None
    ) -> None:
        # A consumer span, child of the job record's context, current while the job is
        # handled: the attempt and any retry are its children, its log lines carry it.
        attrs = {f"hookstream.{name}": value for name, value in job.log_fields().items()}
        span = tracing.start_consumer("deliver", self.topics.deliveries, job.extra, attrs)
        with tracing.activate(span):
            await self._run(job, progress, ticket, source)

    async def _run(
        self, job: DeliveryJob, progress: Progress, ticket: Ticket | None, source: str | None
    ) -> None:
        try:
            sub = await self.cache.get(job.subscription_id, job.application_id)
        except asyncio.CancelledError:
            if ticket is not None:
                ticket.release()
            raise
        if ticket is not None:
            if sub is not None and sub.ordered and self.ordered is not None:
                await self.ordered.intake(job, ticket)
                return
            ticket.release()
        target_url = sub.target_url if sub is not None else ""
        duration_ms: int | None = None
        if (unavailable := unavailable_reason(sub)) is not None:
            outcome = Outcome.skipped(unavailable)
        else:
            assert sub is not None
            if sub.rate_limit and not await self._within_rate(job, sub.rate_limit):
                return
            claim = source if job.attempt > 1 else None
            try:
                attempted = await self.try_once(job, sub, progress, claim)
                if isinstance(attempted, str):
                    if not self._overdue(job):
                        await self._defer(job, attempted)
                        return
                    # Past its deadline a job stops waiting for free: the deferral counts
                    # as a failed attempt, so a target that stays down still ends every
                    # delivery in FAILURE + dead letter after the last one. Counted, it is
                    # claimed as a request is: a copy whose delivery ended meanwhile (the
                    # other chain's 2xx) would otherwise end it again, in FAILURE.
                    if claim is not None:
                        await self._claim(job, claim)
                    outcome = Outcome(ok=False, error=attempted, retryable=True)
                else:
                    outcome, duration_ms = attempted
            except CopyOfAttempt as copy:
                COPIES_DROPPED.inc()
                log.info(COPY_DROPPED, **job.log_fields(), reason=str(copy))
                return
        await self._record(job, sub, target_url, outcome, duration_ms)

    async def try_once(
        self,
        job: DeliveryJob,
        sub: SubscriptionView,
        progress: Progress | None = None,
        claim: str | None = None,
    ) -> tuple[Outcome, int | None] | str:
        """One attempt at ``job``: (outcome, duration in ms), or why it was not made (the
        target's breaker is open, or its slots stayed busy). With ``claim`` (the job's
        source) the attempt is claimed first; a copy raises ``CopyOfAttempt``."""
        target = self._target(sub.target_url)
        if target.refused is not None:
            return Outcome.refused(target.refused), None
        progress = progress or Progress()
        attempted = await self._attempt(job, sub, target, progress, claim)
        if not isinstance(attempted, str) and self._cut_short(*attempted):
            # Our stall, not the target's silence: on the record, then sent again at
            # once (once), with nothing counted against the target.
            await self._record_interrupted(job, sub.target_url, *attempted)
            attempted = await self._attempt(job, sub, target, progress, claim)
        if isinstance(attempted, str):
            return attempted
        await self._record_health(target, *attempted)
        return attempted

    async def _within_rate(self, job: DeliveryJob, rate: int) -> bool:
        """Wait for the job's start under its subscription's rate limit (True), or put it
        aside when that start is further than jobs wait in memory (False). Either way no
        attempt is used: over the limit is not a failure, however long it lasts."""
        while (wait := self.rates.reserve(job.subscription_id, rate)) is None:
            if self._can_defer:
                await self._defer(job, f"rate limit of {rate}/s: waiting its turn")
                return False
            await asyncio.sleep(1.0)  # no tier to wait on: wait here
        if wait:
            await asyncio.sleep(wait)  # cancellable: nothing has been sent
        return True

    async def _record_health(self, target: Target, outcome: Outcome, duration_ms: int) -> None:
        if self.breaker is not None and (outcome.status_code or outcome.retryable):
            # A target that answered below 500 is alive, whatever it thought of the
            # request; timeouts, connection errors and 5xx count against it. A refused
            # target (SSRF guard) says nothing about its health.
            alive = outcome.status_code is not None and outcome.status_code < 500
            if self.breaker.quiet(target.key, alive, duration_ms / 1000):
                return
            try:
                await self.breaker.record(target.key, alive)
            except Exception as exc:  # never worth sending the request again
                log.warning("breaker not updated", target=target.key, error=repr(exc))

    def _cut_short(self, outcome: Outcome, duration_ms: int) -> bool:
        if not outcome.timed_out or self.stalls is None:
            return False
        end = self.stalls.now()
        stalled = self.stalls.stalled_within(end - duration_ms / 1000, end)
        running = duration_ms / 1000 - stalled
        return running < self.settings.delivery_timeout * _FAIR_SHARE

    async def _record_interrupted(
        self, job: DeliveryJob, target_url: str, outcome: Outcome, duration_ms: int
    ) -> None:
        error = (
            f"{outcome.error}, cut short: this dispatcher process was stalled (stopped or "
            "starved of CPU) during the request; sent again, not counted against the target"
        )
        await self.attempts.write(
            attempt_row(
                job,
                target_url=target_url,
                status=AttemptStatus.FAILED_ATTEMPT,
                status_code=None,
                error=error,
                duration_ms=duration_ms,
                excerpt=None,
                now=datetime.now(UTC),
            ),
            None,
        )
        log.warning(
            "attempt cut short by a stall of this process; sending again",
            **job.log_fields(),
            duration_ms=duration_ms,
        )

    def _overdue(self, job: DeliveryJob) -> bool:
        """Has the job waited longer than its whole schedule (jitter included) and a
        breaker cool-down? Then deferring again would let it wait forever."""
        return datetime.now(UTC) > job.first_received_at + self._patience

    # --- the attempt --------------------------------------------------------------

    async def _attempt(
        self,
        job: DeliveryJob,
        sub: SubscriptionView,
        target: Target,
        progress: Progress,
        claim: str | None,
    ) -> tuple[Outcome, int] | str:
        """(outcome, duration in ms), or why the job is put aside unattempted: the
        target's breaker is open, or its slots stayed busy for ``LANE_PATIENCE``.

        The breaker is asked while holding the target's slot: its answer may take a
        Redis round trip, and a job waiting for it must not be overtaken by more than a
        slot's worth of later ones (every finished job behind an unfinished one is
        replayed after a crash).
        """
        if self.fence is not None:
            await self.fence.wait()  # still cancellable: nothing has been sent
        limits = self.limits
        if not await limits.acquire(target.key):
            return f"target {target.key} stalled ({LANE_PATIENCE:g}s, no answer): not attempted"
        if self.breaker is not None and self._can_defer:
            try:
                allowed = self.breaker.allows_now(target.key) or await self.breaker.allow(
                    target.key
                )
            except BaseException:
                limits.release(target.key)
                raise
            if not allowed:
                limits.release(target.key)
                return f"circuit open for {target.key}: not attempted"
        # Claimed only once the request can go: a job put aside above comes back as a
        # new record with the same attempt, and must not find it taken.
        if claim is not None:
            try:
                await self._claim(job, claim)
            except BaseException:
                limits.release(target.key)
                raise
        progress.sending = True
        started = time.perf_counter()
        try:
            secret = sub.secret_key
            now = time.time()
            previous = (
                sub.secrets(datetime.fromtimestamp(now, UTC))[1:] if sub.previous_secret else ()
            )
            headers = request_headers(
                job,
                timestamp=int(now),
                secret=secret,
                signing_key=_signing_key(secret) if secret is not None else None,
                custom=sub.headers,
                previous_key=_signing_key(previous[0]) if previous else None,
            )
            send = post_traced if tracing.enabled else post
            answer = await send(
                self.http,
                target.url,
                job.body,
                headers,
                excerpt_bytes=self.settings.response_excerpt_bytes,
            )
            outcome = outcome_of_response(answer.status, answer.retry_after, excerpt_text(answer))
        except Exception as exc:
            outcome = outcome_of_error(exc, timeout=self.settings.delivery_timeout)
            # Its traceback holds the client's frames, which hold the answer's future,
            # which holds the error: a cycle per failed request (~25 objects) left to
            # the garbage collector. The outcome keeps what the record needs.
            exc.__traceback__ = None
        finally:
            elapsed = time.perf_counter() - started
            limits.release(target.key, elapsed)
        ATTEMPT_SECONDS.observe(elapsed)
        return outcome, int(elapsed * 1000)

    async def _claim(self, job: DeliveryJob, source: str) -> None:
        """Claim the job's attempt, or raise ``CopyOfAttempt`` (claims.py)."""
        if not await self.claims.take(job.delivery_id, job.run, job.attempt, source):
            raise CopyOfAttempt("another copy made this attempt, or the delivery ended")
        # Copies of a first attempt are not claimed, and one that succeeded is not marked
        # ended: the second attempt of a copy that failed finds its SUCCESS row instead.
        # Only in the event's own run: a later run may resend a delivery that succeeded.
        if (
            job.attempt == 2
            and not job.run
            and await self.attempts.succeeded(job.delivery_id, job.first_received_at)
        ):
            raise CopyOfAttempt("another copy of its first attempt succeeded")

    def _target(self, raw: str) -> Target:
        target = self._targets.get(raw)
        if target is None:
            try:
                url = check_url(raw, allow_private=self.settings.allow_private_targets)
                target = Target(url, target_of(raw))
            except UnsafeTargetError as exc:
                target = Target(URL(), "", f"blocked target (SSRF guard): {exc}")
            except ValueError as exc:
                target = Target(URL(), "", f"invalid target URL: {exc}")
            if len(self._targets) >= _TARGET_CACHE_SIZE:
                self._targets.clear()
            self._targets[raw] = target
        return target

    async def _defer(self, job: DeliveryJob, reason: str) -> None:
        """The target's breaker is open, or it is saturated: no request, no attempt used
        up. The job waits on the tier of its current attempt's delay and comes back with
        the same number."""
        schedule = self.settings.retry_schedule
        now = datetime.now(UTC)
        retry = next_retry(
            attempt=min(job.attempt, len(schedule)),
            schedule=schedule,
            topics=self.topics,
            now=now,
            jitter=self.settings.retry_jitter,
        )
        assert retry is not None  # the schedule is not empty (see _attempt)
        waiting = dataclasses.replace(job, due_at=retry.due_at, last_error=reason)
        await self.publisher.publish(
            [OutRecord(retry.topic, waiting.key, waiting.body, waiting.headers())],
        )
        RETRIES.labels(retry.topic.rsplit(".", 1)[-1]).inc()
        log.info(
            "delivery deferred",
            **job.log_fields(),
            reason=reason,
            due_at=retry.due_at.isoformat(),
        )

    # --- what follows -------------------------------------------------------------

    async def _record(
        self,
        job: DeliveryJob,
        sub: SubscriptionView | None,
        target_url: str,
        outcome: Outcome,
        duration_ms: int | None,
    ) -> None:
        decision, row, streak = self.conclude(job, sub, target_url, outcome, duration_ms)
        row_durable = self.attempts.write(row, streak)
        follow_up = self.follow_up(job, decision)
        if follow_up:
            await self.publisher.publish(follow_up)
        await row_durable
        if decision.status is not AttemptStatus.FAILED_ATTEMPT and (
            job.attempt > 1 or decision.status is AttemptStatus.FAILURE
        ):
            # Durable now: a copy of this job still on a tier must not start over. A
            # first attempt's success is not marked (a key for every delivery).
            await self.claims.end(job.delivery_id, job.run)
        await self.after(job, sub, target_url, outcome, decision)

    def conclude(
        self,
        job: DeliveryJob,
        sub: SubscriptionView | None,
        target_url: str,
        outcome: Outcome,
        duration_ms: int | None,
    ) -> tuple[Decision, AttemptRow, Streak | None]:
        """What follows an outcome, the attempt row saying so, and its streak mark."""
        now = datetime.now(UTC)
        decision = decide(
            outcome,
            job,
            topics=self.topics,
            schedule=self.settings.retry_schedule,
            jitter=self.settings.retry_jitter,
            now=now,
        )
        streak: Streak | None = None
        if sub is not None and sub.is_active:
            if decision.status is AttemptStatus.SUCCESS:
                streak = Streak.SUCCEEDED
            elif decision.status is AttemptStatus.FAILURE:
                streak = Streak.FAILED
        row = attempt_row(
            job,
            target_url=target_url,
            status=decision.status,
            status_code=outcome.status_code,
            error=decision.error,
            duration_ms=duration_ms,
            excerpt=outcome.excerpt,
            now=now,
        )
        return decision, row, streak

    async def after(
        self,
        job: DeliveryJob,
        sub: SubscriptionView | None,
        target_url: str,
        outcome: Outcome,
        decision: Decision,
    ) -> None:
        """Once the outcome is on the record: metrics, the log, a deactivation."""
        _DELIVERIES[decision.status].inc()
        if decision.status is not AttemptStatus.SUCCESS:
            self._log_failure(job, target_url, outcome, decision)
        if decision.deactivate and sub is not None:
            await self._deactivate(sub.id, decision.error or "deactivated")

    def follow_up(self, job: DeliveryJob, decision: Decision) -> list[OutRecord]:
        if decision.retry is not None:
            retry = decision.retry
            RETRIES.labels(retry.topic.rsplit(".", 1)[-1]).inc()
            nxt = job.next_attempt(retry.due_at, decision.error)
            if tracing.enabled:
                nxt = _traced_retry(nxt, retry.topic)
            return [OutRecord(retry.topic, nxt.key, nxt.body, nxt.headers())]
        if decision.dead_letter:
            DLQ.inc()
            dead = dataclasses.replace(job, last_error=decision.error)
            return [OutRecord(self.topics.dlq, dead.key, dead.body, dead.headers())]
        return []

    async def _deactivate(self, subscription_id: uuid.UUID, reason: str) -> None:
        async with self.sessions.begin() as session:
            changed = await session.scalar(
                update(Subscription)
                .where(Subscription.id == subscription_id, Subscription.is_active.is_(True))
                .values(is_active=False, deactivated_reason=reason[:500])
                .returning(Subscription.id)
            )
        if changed is not None:
            log.warning("subscription deactivated", subscription_id=str(subscription_id))
        self.cache.invalidate()
        await notify_changed(self.redis, self.settings.topic_prefix, subscription_id)

    @staticmethod
    def _log_failure(
        job: DeliveryJob, target_url: str, outcome: Outcome, decision: Decision
    ) -> None:
        # The host only: a webhook URL's path or query often carries a token.
        try:
            host = URL(target_url).host if target_url else None
        except ValueError:
            host = None
        log.info(
            "delivery not successful",
            **job.log_fields(),
            status=decision.status.value,
            status_code=outcome.status_code,
            error=decision.error,
            target_host=host,
            next_attempt_due=decision.retry.due_at.isoformat() if decision.retry else None,
        )


def _traced_retry(job: DeliveryJob, topic: str) -> DeliveryJob:
    """A producer span for scheduling the next attempt (child of the current "deliver"
    span); the retry record carries its context through the tier and the scheduler."""
    assert job.due_at is not None
    span = tracing.start_producer(
        topic,
        attributes={"hookstream.attempt": job.attempt, "hookstream.due_at": job.due_at.isoformat()},
        operation="retry",
    )
    span.end()
    return dataclasses.replace(job, extra={**job.extra, **tracing.headers_of(span)})
