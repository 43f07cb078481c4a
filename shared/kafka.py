"""Kafka producer, consumer and admin factories with the settings every service relies on."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import AIOKafkaConnection, CloseReason
from aiokafka.errors import KafkaConnectionError

from shared.logging import get_logger
from shared.settings import Settings

log = get_logger("kafka")


def _send_broken_is_a_connection_error() -> None:
    """A request written to a broker connection that just closed fails as a connection
    error, as aiokafka expects, on uvloop too.

    aiokafka catches ``OSError`` from the write; uvloop's transports raise
    ``RuntimeError("... the handler is closed")`` instead (aiokafka #1038, open). Raised
    inside the consumer's coordination routine, that error ended the routine for good:
    every later poll failed with "Unexpected error during coordination" while the
    consumer stayed in its group, so its partitions were never read again. The cluster
    fault test lost 635 deliveries that way when two brokers were killed.
    """
    send = AIOKafkaConnection.send
    if getattr(send, "hookstream_wrapped", False):
        return

    def guarded(self: AIOKafkaConnection, request: Any, expect_response: bool = True) -> Any:
        try:
            return send(self, request, expect_response)
        except RuntimeError as err:
            writer = self._writer
            if writer is None or not writer.transport.is_closing():
                raise  # not a write on a closed connection
            self.close(reason=CloseReason.CONNECTION_BROKEN)
            raise KafkaConnectionError(
                f"Connection at {self.host}:{self.port} broken: {err}"
            ) from err

    guarded.hookstream_wrapped = True  # type: ignore[attr-defined]
    AIOKafkaConnection.send = guarded


_send_broken_is_a_connection_error()


@asynccontextmanager
async def admin_client(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    """An admin client, started, for one piece of work: closed after it (not when it
    never started)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


def make_producer(settings: Settings) -> AIOKafkaProducer:
    # acks=all: a 2xx from ingest and a committed offset both mean "the broker has it".
    # Idempotence stays off: aiokafka 0.14 cannot recover an idempotent producer whose
    # batch failed while the broker was down (its sequence runs ahead of the broker's and
    # every later send fails with OutOfOrderSequenceNumber until restart, aiokafka #1017;
    # our broker-restart fault test caught it). A retried send may duplicate a record,
    # which at-least-once delivery allows (receivers dedupe on webhook-id).
    # Linger: see Settings.producer_linger_ms (0: batches grow with load by themselves).
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=settings.producer_linger_ms,
        max_batch_size=256 * 1024,
        max_request_size=max(1_048_576, settings.max_body_bytes * 2),
        request_timeout_ms=int(max(settings.publish_timeout, 5) * 1000) * 3,
    )


# Fetch batching that adapts to load (see FetchPacing). Idle, the wait only bounds a poll
# that finds nothing.
IDLE_FETCH_WAIT_MS = 100
BUSY_RECORDS_PER_S = 500.0
BUSY_FETCH_MIN_BYTES = 64 * 1024
PACING_WINDOW_S = 0.1

# The group drops a member it has not heard from for this long; a dispatcher that was
# stalled longer (services/dispatcher/stalls.py) knows its partitions have moved on.
SESSION_TIMEOUT_MS = 10_000


def make_consumer(
    settings: Settings,
    *topics: str,
    group_id: str,
    max_poll_records: int = 500,
    max_poll_interval_ms: int = 300_000,
) -> AIOKafkaConsumer:
    # Offsets are committed by hand, per partition, at the highest contiguous finished
    # offset (design §3), so auto-commit is always off.
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        max_poll_interval_ms=max_poll_interval_ms,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=3_000,
        fetch_max_wait_ms=IDLE_FETCH_WAIT_MS,
        isolation_level="read_uncommitted",
    )


def busy(records: int, seconds: float) -> bool:
    """Is a consumer that read ``records`` in ``seconds`` under a steady flow?"""
    return seconds > 0 and records / seconds > BUSY_RECORDS_PER_S


class FetchPacing:
    """Fetch batching that adapts to load: none at light load, a short wait under load.

    The broker answers a fetch as soon as one record is there (``fetch_min_bytes`` 1), so
    at light load a record is read a fraction of a millisecond after it was written. Under
    a steady flow the same rule costs a fetch round trip for every record or two: a request
    to encode and write, a response to decode, a request for the broker to serve. At 1,500
    webhooks/s that was a fifth of the dispatcher's CPU (py-spy: socket writes to the
    broker alone were 19 %), on a machine whose tail latency is CPU contention. So while
    more than ``BUSY_RECORDS_PER_S`` records arrive a second, each fetch asks the broker
    to wait until it has ``BUSY_FETCH_MIN_BYTES`` or ``wait_ms`` has passed; below that
    rate it answers at once again. Measured at 1,500 webhooks/s with ``wait_ms`` 1:
    dispatcher CPU 61 to 62 % → 50 to 51 % of a core, broker 27 to 30 % → 26 %. But the
    throughput benches lost 3 to 8 % with it, so it is off unless
    ``HOOKSTREAM_FETCH_BATCH_WAIT_MS`` is set (settings.py says when).

    aiokafka has no public way to change these after start; its fetcher reads the two
    attributes set here into every fetch request it builds (aiokafka 0.14, pinned in
    constraints.txt; tests/integration/test_fetch_pacing.py checks they are still there).
    If they are not, pacing turns itself off with a warning rather than guess.
    """

    def __init__(self, consumer: AIOKafkaConsumer, wait_ms: int) -> None:
        self._consumer = consumer
        self._wait_ms = wait_ms
        self._records = 0
        self._since = time.monotonic()
        self.busy = False
        self.off = wait_ms <= 0

    def fetched(self, records: int) -> None:
        """Count the records one poll returned; every PACING_WINDOW_S, decide again."""
        if self.off:
            return
        self._records += records
        now = time.monotonic()
        if now - self._since < PACING_WINDOW_S:
            return
        now_busy = busy(self._records, now - self._since)
        self._records, self._since = 0, now
        if now_busy != self.busy:
            self._apply(now_busy)

    def _apply(self, now_busy: bool) -> None:
        fetcher: Any = getattr(self._consumer, "_fetcher", None)
        if not all(hasattr(fetcher, a) for a in ("_fetch_min_bytes", "_fetch_max_wait_ms")):
            self.off = True
            log.warning("fetch pacing off: this aiokafka has no fetch settings to adjust")
            return
        self.busy = now_busy
        fetcher._fetch_min_bytes = BUSY_FETCH_MIN_BYTES if now_busy else 1
        fetcher._fetch_max_wait_ms = self._wait_ms if now_busy else IDLE_FETCH_WAIT_MS
