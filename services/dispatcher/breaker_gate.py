"""A per-process memo in front of the shared circuit breaker (``shared/breaker.py``).

The breaker answers from its local view for a second, then asks Redis. At thousands of
deliveries a second every job holding a slot for a target whose view has just gone stale
asks Redis at the same moment (up to 64 per target, and again to report its success),
which exhausted the Redis client's 100 connections in the benchmark and sent the breaker
to its local-only fallback. The gate remembers for ``fresh`` seconds that a target's
breaker said "closed", answers from that, and does not report successes meanwhile (the
breaker skips those round trips itself when its view is fresh). A failure in a run
reaches the breaker and drops the memo, so an opening breaker is seen within ``fresh``;
and the first success after a failure it was told always reaches it too, memo or not, as
the breaker counts failures *in a row*: a flaky target whose successes were kept from it
would look dead (the fault suite's SIGSTOP scenario opened a live target's breaker that
way).

A lone failure is not told at all. The first failure of a run (after a success, as this
process saw them), while the breaker is plainly closed, is held here: the next failure
takes it along, both in one round trip, and a success first forgives it, with nothing
told either way. Against slow targets 1 % of requests hang, each target's hang is
followed by successes, and telling the breaker cost two Redis round trips per hang (the
failure, then the first success after it), ~200 µs of CPU of the ~650 a hang cost the
dispatcher. A dead or failing target still reaches the breaker from its second failure
in a row on; across processes, opening may take one failure more per process (each
holds its first), against a threshold of five.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shared.breaker import BreakerState, CircuitBreaker

# 100 ms: a target that turns bad gets at most a tenth of a second of extra requests
# before the dispatcher sees its breaker open; a healthy one costs ≤ 10 lookups a second.
FRESH = 0.1
_MAX_TARGETS = 10_000


def _mark(targets: set[str], target: str) -> None:
    """Add ``target`` to one of the gate's sets, which start over (forgetting what they
    held) at ``_MAX_TARGETS`` targets: memory stays bounded whatever the targets."""
    if len(targets) >= _MAX_TARGETS:
        targets.clear()
    targets.add(target)


class BreakerGate:
    def __init__(
        self,
        breaker: CircuitBreaker,
        *,
        fresh: float = FRESH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._breaker = breaker
        self._fresh = fresh
        self._clock = clock
        self._closed_at: dict[str, float] = {}
        # Targets with a failure the breaker has not yet seen a success after.
        self._failing: set[str] = set()
        # Targets whose latest outcome is a lone failure, held back (see the docstring).
        self._held: set[str] = set()

    def allows_now(self, target: str) -> bool:
        """True when ``allow`` would say yes without asking anyone: the memo is fresh, or
        the breaker saw the target plainly closed lately (the memo is then renewed, as
        ``allow`` would). False: ask ``allow``.

        The hot path asks this first (and ``quiet`` before ``record``). Against targets
        slower than ``fresh`` the memo has gone stale by a target's next request, so each
        request went through two coroutines to the breaker's local view and back: allow
        and record together took 1.67 µs with the memo stale and the view fresh, 0.95 µs
        with these checks first (a micro-benchmark, warm caches)."""
        now = self._clock()
        seen = self._closed_at.get(target)
        if seen is not None and now - seen < self._fresh:
            return True
        # Only a target the memo holds: a new one goes through ``allow``, which bounds it.
        if seen is not None and self._breaker.closed_lately(target):
            self._closed_at[target] = now
            return True
        return False

    def quiet(self, target: str, ok: bool, took: float = 0.0) -> bool:
        """True when ``record(target, ok)`` would tell the breaker nothing: a success, no
        failure of the target on the books here, and the memo fresh or the breaker's view
        plainly closed lately, as of when the request began (``took`` seconds ago; see
        ``CircuitBreaker.closed_lately``). The hot path skips the call then (see
        ``allows_now``)."""
        if not ok or target in self._failing or target in self._held:
            return False
        return self._seen_closed(target, took)

    def _seen_closed(self, target: str, took: float = 0.0) -> bool:
        """The memo is fresh, or the breaker's view was plainly closed lately (as of
        ``took`` seconds ago)."""
        seen = self._closed_at.get(target)
        if seen is not None and self._clock() - seen < self._fresh:
            return True
        return self._breaker.closed_lately(target, took)

    async def allow(self, target: str) -> bool:
        now = self._clock()
        seen = self._closed_at.get(target)
        if seen is not None:
            if now - seen < self._fresh:
                return True
            # Claim the refresh: callers arriving while it runs keep the memo's answer.
            self._closed_at[target] = now
        allowed = await self._breaker.allow(target)
        if allowed and self._breaker.state(target) is BreakerState.CLOSED:
            if len(self._closed_at) >= _MAX_TARGETS:
                self._closed_at.clear()
            self._closed_at[target] = self._clock()
        else:
            self._closed_at.pop(target, None)
        return allowed

    async def record(self, target: str, ok: bool) -> None:
        if self.quiet(target, ok):
            return
        if ok:
            if target in self._held:
                self._held.discard(target)  # a lone failure, forgiven: nothing to tell
                return
            self._failing.discard(target)  # the first success after a failure: tell it
            await self._breaker.record(target, ok)
            return
        failures = 1
        if target in self._held:
            self._held.discard(target)
            failures = 2  # the held one and this one, in a row
        elif target not in self._failing and self._seen_closed(target):
            # The first of a run, the breaker plainly closed: held until the next outcome.
            # Not when it may be open or half-open (another process's failures): a failed
            # probe must reopen it at once.
            _mark(self._held, target)
            return
        self._closed_at.pop(target, None)
        _mark(self._failing, target)
        await self._breaker.record(target, ok, failures=failures)
