"""Knobs of the retry scheduler alone: ``HOOKSTREAM_RETRY_SCHEDULER_<NAME>``.

The shared ``Settings`` (topics, schedule, broker) still come from ``HOOKSTREAM_*``.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SchedulerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HOOKSTREAM_RETRY_SCHEDULER_", extra="ignore", frozen=True
    )

    # getmany's wait. It bounds how late an acknowledged publish is committed and how
    # long a stop takes to notice; 200 ms is invisible next to the shortest tier (1 s in
    # tests, 10 s by default).
    poll_timeout_ms: int = Field(200, ge=10, le=5_000)
    # aiokafka leaves the group when getmany has not been called for this long. The loop
    # calls it every poll_timeout_ms whatever is paused, so only a stuck loop hits it.
    max_poll_interval_ms: int = Field(300_000, ge=1_000)
    # Records handed to the producer and not yet acknowledged, across partitions; past it
    # the loop waits for acks before fetching more.
    max_in_flight: int = Field(1_000, ge=1)
    # On SIGTERM or revocation: how long to wait for in-flight publishes before committing
    # what is acknowledged (the rest is re-read by the next owner: a duplicate, not a loss).
    drain_timeout: float = Field(10.0, gt=0)
    # After a failed publish the partition is rewound to the failed record and retried
    # after this pause, instead of spinning on a broker that refuses writes.
    publish_retry_backoff: float = Field(1.0, gt=0)
