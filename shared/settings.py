"""Hookstream settings: one object, built in each entry point from the environment.

Every field can be set as ``HOOKSTREAM_<NAME>`` (e.g. ``HOOKSTREAM_RETRY_SCHEDULE``).
Nothing here reads the environment at import time.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
# scheme://host[:port]: what CSP frame-ancestors takes, and nothing that could end the
# directive (no quotes, semicolons or spaces inside one origin).
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:\d{1,5})?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``"10s"``, ``"1m"``, ``"2h"``, ``"1.5"`` (seconds) → timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 10s, 1m, 2h, 1d)")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return timedelta(seconds=value * _UNIT_SECONDS[unit])


def format_duration(delay: timedelta) -> str:
    """The shortest exact name for a delay, used in retry tier topic names: 10s, 1m, 2h."""
    ms = round(delay.total_seconds() * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


RetrySchedule = Annotated[tuple[timedelta, ...], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HOOKSTREAM_", extra="ignore", frozen=True)

    # --- where things are -----------------------------------------------------------
    database_url: str = "postgresql+asyncpg://hookstream@127.0.0.1:55432/hookstream"
    redis_url: str = "redis://127.0.0.1:56379/0"
    kafka_bootstrap: str = "127.0.0.1:59092"

    # --- HTTP (ingest) ---------------------------------------------------------------
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=1, le=65535)
    api_key: SecretStr | None = None
    # Development only: lets ingest start with no API key (management routes then refuse
    # every request). `make run` generates a key instead, so this is rarely needed.
    allow_no_api_key: bool = False
    # Keys for subscription secrets at rest (shared/secretbox.py): base64 of 32 bytes each,
    # comma-separated; the first encrypts, every one decrypts. Without one the services
    # refuse to start unless allow_plaintext_secrets says otherwise.
    encryption_keys: SecretStr | None = None
    allow_plaintext_secrets: bool = False
    max_body_bytes: int = Field(262_144, ge=1024)
    max_url_length: int = Field(2048, ge=64)
    # Sum of header names and values per request; 16 KiB is Node's and nginx's ballpark.
    max_header_bytes: int = Field(16_384, ge=1024)
    idempotency_ttl: timedelta = timedelta(hours=24)
    # 2xx means the broker acked; past this bound ingest answers 503 instead of waiting.
    publish_timeout: float = Field(5.0, gt=0)
    # How long a producer waits for more records before sending a batch. 0: a record goes
    # at once when nothing is in flight to its broker, and records queue into the next
    # batch while one is (aiokafka sends one request per broker at a time), so batches
    # grow with load by themselves. 5 ms cost every webhook 5 ms at light load (bench
    # latency) and bought nothing measurable under load (bench delivery, fanout). Ingest
    # measured with wrk -c32 on 2 cores: 5 ms → 3,460 req/s (each request waits for its
    # ack: latency-bound), 2 ms → 5,530, 0 → 5,800.
    producer_linger_ms: int = Field(0, ge=0, le=1000)
    # The dispatcher's fetch wait while records flow faster than 500/s (shared/kafka.py
    # FetchPacing): each fetch then waits up to this long for 64 KB instead of coming back
    # with a record or two. Below that rate fetches answer at once. 0 (the default): never
    # wait. 1 saved 18 % of the dispatcher's CPU at 1,500 webhooks/s but cost 3-8 % of the
    # throughput benches and 1-3 ms of p50 at moderate load (bench/results/
    # 2026-12-04-fetch-pacing-pairs.md): a choice for CPU-bound hosts at steady load.
    fetch_batch_wait_ms: int = Field(0, ge=0, le=100)
    # Seconds between polls of the subscription change log (the consistency pass behind
    # the pub/sub push): a lost message costs at most this much staleness.
    subscription_cache_ttl: float = Field(1.0, gt=0)
    # Subscriptions a process keeps in memory by id, and in application indexes for
    # fan-out (each ~0.5 KB); past them the least recently used go (shared/subscriptions.py).
    subscription_cache_ids: int = Field(100_000, ge=1)
    subscription_cache_app_views: int = Field(100_000, ge=1)

    # --- topics ----------------------------------------------------------------------
    topic_prefix: str = Field("hookstream", pattern=r"^[A-Za-z0-9._-]+$")
    events_partitions: int = Field(8, ge=1)
    deliveries_partitions: int = Field(8, ge=1)
    retry_partitions: int = Field(4, ge=1)
    dlq_partitions: int = Field(1, ge=1)
    # Copies of every partition. None: min(3, the brokers the cluster reports when the
    # topics are created), so one broker gets 1 and a cluster of three or more gets 3.
    topic_replication_factor: int | None = Field(None, ge=1)
    # min.insync.replicas of every topic: how many copies acks=all waits for before ingest
    # answers 202. None: 2 for topics with 3 or more replicas (one broker may be down and
    # writes go on; with two down, 503 instead of a webhook on one disk), else the
    # broker's default. Redpanda ignores the property: its acks=all waits for a Raft
    # majority, which with 3 replicas is the same two copies.
    topic_min_insync_replicas: int | None = Field(None, ge=1)
    # How long the events topic keeps records (retention.ms, applied when the topic is
    # created): the history a backfill can replay. At least the attempt retention (72 h),
    # so any delivery still shown can be backfilled; 168 h is Kafka's own default, what
    # the topic had before this was a setting.
    events_retention_hours: int = Field(168, ge=1)

    # --- delivery --------------------------------------------------------------------
    retry_schedule: RetrySchedule = tuple(
        parse_duration(d) for d in ("10s", "1m", "5m", "30m", "2h", "6h", "12h")
    )
    # Jitter only lengthens a delay (never early), by up to this fraction.
    retry_jitter: float = Field(0.2, ge=0, le=1)
    delivery_timeout: float = Field(10.0, gt=0)
    allow_private_targets: bool = False
    # Slow targets are a matter of open requests, not CPU: at 150 ms a response, 4,096 in
    # flight is ~27,000 deliveries/s of room, far past what one process's CPU sends, so the
    # bound that binds for a slow or hanging target is its own (per target).
    max_in_flight: int = Field(4096, ge=1)
    # The bound below max_in_flight follows the event loop's lag (dispatcher/limits.py):
    # requests admitted past what the loop can drive only queue inside it, time out by
    # our own doing and record the target as slow. False pins it at max_in_flight.
    adaptive_in_flight: bool = True
    max_in_flight_per_target: int = Field(64, ge=1)
    response_excerpt_bytes: int = Field(1024, ge=0)
    # Processes `make run` starts (Procfile, honcho); the services never read these.
    # Ingest processes listen on consecutive ports from http_port (8000, 8001, ...).
    dispatcher_processes: int = Field(1, ge=1)
    ingest_processes: int = Field(1, ge=1)
    retry_scheduler_processes: int = Field(1, ge=1)
    # A subscription that failed this many deliveries in a row (each one after all its
    # attempts, ~21 h with the default schedule), the first at least deactivate_after
    # ago, is deactivated. Both must hold: a burst of failures in a short outage does
    # not deactivate; neither does one lonely failure a day ago.
    deactivate_after_failures: int = Field(50, ge=1)
    deactivate_after: timedelta = timedelta(hours=24)

    # --- retention (janitor) ---------------------------------------------------------
    retention_hours: int = Field(72, ge=1)
    partition_width: timedelta = timedelta(hours=6)
    partitions_ahead: int = Field(8, ge=1)
    janitor_interval: timedelta = timedelta(minutes=5)

    # --- backfill (janitor) ----------------------------------------------------------
    # Delivery jobs a janitor process publishes per second for backfills, all of them
    # together. They join live traffic on the deliveries topic: at 500/s a backfill takes
    # a fifth of what one dispatcher sends to fast targets on 2 cores (~2,500/s), and
    # 100,000 matching events take ~3.5 min.
    backfill_max_rate: int = Field(500, ge=1)
    # Events read per second from the log, all backfills of a process together. Reading
    # costs CPU (fetching, header checks, matching) on the same cores as live traffic:
    # unbounded, a janitor took a whole core of 2 and live delivery fell to 61 % of its
    # rate (bench/backfill.py); at this bound a backfill reads 90,000,000 events an hour.
    backfill_max_scan_rate: int = Field(25_000, ge=100)
    # Backfills one janitor process runs at once; the rest wait their turn.
    backfill_concurrency: int = Field(2, ge=1)

    # --- portal ----------------------------------------------------------------------
    # Origins allowed to show /portal in a frame (CSP frame-ancestors), space-separated,
    # e.g. "https://app.example.com https://admin.example.com". Unset: framing is refused.
    portal_frame_ancestors: str | None = None

    # --- observability ---------------------------------------------------------------
    log_format: Literal["json", "console"] = "json"
    log_level: str = "INFO"
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p for p in value.split(",") if p.strip()]
            return tuple(parse_duration(p) for p in parts)
        return value

    @field_validator(
        "idempotency_ttl", "partition_width", "janitor_interval", "deactivate_after", mode="before"
    )
    @classmethod
    def _parse_delta(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_duration(value)
        return value

    @field_validator("portal_frame_ancestors")
    @classmethod
    def _origins(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        for origin in value.split():
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"not an origin: {origin!r} (use scheme://host[:port], space-separated)"
                )
        return " ".join(value.split())

    @model_validator(mode="after")
    def _check_schedule(self) -> Settings:
        if any(d.total_seconds() <= 0 for d in self.retry_schedule):
            raise ValueError("retry_schedule delays must be positive")
        return self

    @property
    def max_attempts(self) -> int:
        """The first attempt plus one per scheduled retry."""
        return 1 + len(self.retry_schedule)
