"""`python -m services.dispatcher`: fan-out and delivery stages in one consumer group.

Scale out by running more processes (``HOOKSTREAM_DISPATCHER_PROCESSES`` for
``make run``): the group shares the partitions between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc

from services.dispatcher import gcpace
from services.dispatcher.attempts import AttemptWriter
from services.dispatcher.breaker_gate import BreakerGate
from services.dispatcher.consumer import Dispatcher
from services.dispatcher.delivery_stage import DeliveryStage
from services.dispatcher.fanout import EventWriter, FanOutStage
from services.dispatcher.ordered import OrderedQueues
from services.dispatcher.publishing import Publisher
from services.dispatcher.resources import open_resources
from services.dispatcher.stalls import LoopStalls, ZombieFence
from services.dispatcher.streaks import Deactivated, StreakPolicy
from shared.breaker import BreakerConfig, CircuitBreaker
from shared.kafka import SESSION_TIMEOUT_MS
from shared.logging import get_logger
from shared.metrics import serve_metrics
from shared.runner import run_worker
from shared.settings import Settings
from shared.subscriptions import notify_changed

log = get_logger("dispatcher")

# Rows left in a writer at shutdown get this long to reach the database.
_FLUSH_TIMEOUT = 10.0


def tune_gc() -> None:
    """Collect garbage less often, and never rescan start-up objects.

    The hot path allocates a few hundred short-lived objects per delivery while thousands
    of queued jobs stay alive, so CPython's default gen-0 threshold (700) ran a collection
    every few deliveries and full ones scanned every module object. Measured on the
    delivery-stage bench (20k jobs, 2 cores): 270-280 µs of CPU per delivery with the
    defaults, 145-160 µs with this. Cycles are still collected, just in larger batches
    (a full collection every ~100M allocations, about every two minutes at full load).
    With thousands of requests open or jobs in progress the young threshold grows
    (``gcpace``).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*gcpace.thresholds(0, 100))  # the pace for no request open


def drain_timeout(settings: Settings) -> float:
    """How long revoked or stopping work may take: one request's timeout plus slack for
    its bookkeeping, capped so a rebalance never stalls the group for long."""
    return min(settings.delivery_timeout + 2.0, 30.0)


async def run(settings: Settings, stop: asyncio.Event) -> None:
    serve_metrics(settings.metrics_port, settings.metrics_host)
    async with open_resources(settings) as res:

        async def deactivated(subs: list[Deactivated]) -> None:
            for sub in subs:
                log.warning(
                    "subscription deactivated: failed every delivery",
                    subscription_id=str(sub.subscription_id),
                    failures=sub.streak,
                    failing_since=sub.since.isoformat(),
                )
                await notify_changed(res.redis, settings.topic_prefix, sub.subscription_id)
            res.cache.invalidate()

        attempts = AttemptWriter(
            res.pg,
            streak_policy=StreakPolicy(
                settings.deactivate_after_failures, settings.deactivate_after
            ),
            on_deactivated=deactivated,
        )
        events = EventWriter(res.pg)
        attempts.start()
        events.start()
        tune_gc()
        publisher = Publisher(res.producer)
        stalls = LoopStalls()
        fence = ZombieFence(stalls, SESSION_TIMEOUT_MS / 1000)
        delivery = DeliveryStage(
            settings=settings,
            topics=res.topics,
            cache=res.cache,
            http=res.http,
            publisher=publisher,
            attempts=attempts,
            sessions=res.sessions,
            redis=res.redis,
            breaker=BreakerGate(
                CircuitBreaker(
                    res.redis,
                    settings.topic_prefix,
                    # A probe's lease must outlast the request it lets through.
                    BreakerConfig(probe_lease=max(15.0, settings.delivery_timeout + 5)),
                )
            ),
            stalls=stalls,
            fence=fence,
        )
        ordered = OrderedQueues(delivery, res.pg)
        delivery.ordered = ordered
        ordered.start()
        dispatcher = Dispatcher(
            res.consumer,
            res.topics,
            FanOutStage(res.topics, res.cache, publisher, events, attempts, fence),
            delivery,
            drain_timeout=drain_timeout(settings),
            fence=fence,
            fetch_batch_wait_ms=settings.fetch_batch_wait_ms,
        )
        watching = asyncio.create_task(stalls.run(), name="stall-watch")
        adapting = asyncio.create_task(
            delivery.limits.run(
                on_tick=lambda in_flight: gcpace.pace(in_flight, dispatcher.jobs_in_progress)
            ),
            name="in-flight-bound",
        )
        try:
            log.info(
                "dispatching",
                max_in_flight=settings.max_in_flight,
                adaptive_in_flight=settings.adaptive_in_flight,
                max_in_flight_per_target=settings.max_in_flight_per_target,
                allow_private_targets=settings.allow_private_targets,
            )
            await dispatcher.run(stop)
        finally:
            await ordered.close()
            for task in (adapting, watching):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await events.close(_FLUSH_TIMEOUT)
            await attempts.close(_FLUSH_TIMEOUT)


def main() -> None:
    run_worker("dispatcher", Settings(), run)


if __name__ == "__main__":
    main()
