"""Prometheus metrics: one registry of names for every service.

Ingest serves them on /metrics; each worker serves them on its own small port
(HOOKSTREAM_METRICS_PORT) via ``serve_metrics``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

INGESTED = Counter(
    "hookstream_ingested_total",
    "Webhooks received by ingest, by route and outcome (accepted, filtered, rejected).",
    ["route", "outcome"],
)
PUBLISHED = Counter(
    "hookstream_published_total", "Records acknowledged by the broker, by topic.", ["topic"]
)
DELIVERIES = Counter(
    "hookstream_deliveries_total",
    "Delivery attempts by outcome (SUCCESS, FAILED_ATTEMPT, FAILURE).",
    ["outcome"],
)
ATTEMPT_SECONDS = Histogram(
    "hookstream_attempt_duration_seconds",
    "Duration of one HTTP delivery attempt.",
    # Local sinks answer in ~1 ms; real endpoints in 50-500 ms; the timeout is 10 s.
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RETRIES = Counter("hookstream_retries_total", "Jobs sent to a retry tier, by tier.", ["tier"])
DLQ = Counter("hookstream_dlq_total", "Jobs written to the dead-letter topic.")
COPIES_DROPPED = Counter(
    "hookstream_retry_copies_dropped_total",
    "Copies of a retry job dropped unsent: another copy made their attempt.",
)
IN_FLIGHT = Gauge("hookstream_in_flight_deliveries", "Deliveries currently in flight.")
IN_FLIGHT_LIMIT = Gauge(
    "hookstream_in_flight_limit",
    "The dispatcher's bound on deliveries in flight now (adapts to its event loop's lag).",
)
CONSUMER_LAG = Gauge(
    "hookstream_consumer_lag_records", "Records not yet consumed, by topic.", ["topic"]
)
BREAKERS_OPEN = Gauge("hookstream_breakers_open", "Targets whose circuit breaker is open.")
RETRY_REPUBLISHED = Counter(
    "hookstream_retry_republished_total",
    "Due retries re-published from a tier topic to the deliveries topic, by tier topic.",
    ["tier"],
)
RETRY_LATENESS = Histogram(
    "hookstream_retry_lateness_seconds",
    "How long after its due_at a retry was re-published (never negative by design).",
    # A timer resumes a partition 5 ms after due_at and the fetch follows at once, so a
    # healthy scheduler sits in the first buckets; seconds mean it is falling behind.
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
# Light load lives under 5 ms (bench latency); a backlog shows as seconds.
_WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05)
RECORD_WAIT = Histogram(
    "hookstream_record_wait_seconds",
    "From a record's CreateTime (its producer's send) to the dispatcher reading it: the "
    "producer's linger, the broker's append and the consumer's fetch. By stage: fanout "
    "(events written by ingest), delivery (jobs written by fan-out or the retry scheduler).",
    ["stage"],
    buckets=(*_WAIT_BUCKETS, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
GC_PAUSE = Histogram(
    "hookstream_gc_pause_seconds",
    "How long one garbage collection stopped the process (event loop included), by generation.",
    ["generation"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
RETRY_PAUSED_PARTITIONS = Gauge(
    "hookstream_retry_paused_partitions",
    "Tier partitions paused until their head record is due (or a failed publish backs off).",
)
SUBSCRIPTIONS_LOADED = Gauge(
    "hookstream_subscription_cache_loaded_timestamp_seconds",
    "When this process's subscription cache last read the table (Unix time the read began).",
)
POISON_RECORDS = Counter(
    "hookstream_poison_records_total",
    "Records skipped because their headers could not be decoded, by topic.",
    ["topic"],
)


def serve_metrics(port: int | None, host: str = "127.0.0.1") -> None:
    """Expose the default registry on <host>:<port> (a worker's metrics port).

    Loopback by default; containers set HOOKSTREAM_METRICS_HOST=0.0.0.0 so Prometheus in
    another container can scrape them.
    """
    if port is not None:
        start_http_server(port, addr=host)
