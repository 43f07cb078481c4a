"""Tables (design §7). Schema changes go through Alembic only (migrations/)."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.secretbox import EncryptedText

# The application with uid ``default`` holds what the seed-compatible flat routes create
# (migration 0002). Fixed, so records and processes know it without a query.
DEFAULT_APPLICATION_ID = uuid.uuid5(uuid.NAMESPACE_URL, "hookstream:application:default")


class Base(DeclarativeBase):
    pass


class Tenanted:
    """A table whose rows belong to one application: ``shared.tenancy`` scopes every ORM
    statement on it to the caller's application."""

    application_id: Mapped[uuid.UUID]


class AttemptStatus(enum.StrEnum):
    SUCCESS = "SUCCESS"
    FAILED_ATTEMPT = "FAILED_ATTEMPT"
    FAILURE = "FAILURE"


class Application(Base):
    """A tenant: owns subscriptions, scoped API keys and, later, portal sessions.

    Deleting one sets ``deleted_at``: its rows stay so the operator can read the history.
    """

    __tablename__ = "applications"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    uid: Mapped[str | None] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiKey(Tenanted, Base):
    """A key scoped to one application. Only a SHA-256 of the key is stored: keys carry
    256 random bits, so a fast hash is enough (no password stretching needed)."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    application_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("applications.id"))
    name: Mapped[str] = mapped_column(Text)
    prefix: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PortalLink(Tenanted, Base):
    """A one-use link to an application's portal; only the token's SHA-256 is stored."""

    __tablename__ = "portal_links"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    application_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("applications.id"))
    token_hash: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebSession(Base):
    """A browser session of the dashboard (``kind='ui'``) or of one application's portal
    (``kind='portal'``). The cookie holds a random token; this row its SHA-256. Setting
    ``ended_at`` (logout) ends it wherever the cookie was copied."""

    __tablename__ = "web_sessions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary)
    kind: Mapped[str] = mapped_column(Text)
    application_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("applications.id"))
    csrf: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Subscription(Tenanted, Base):
    __tablename__ = "subscriptions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    application_id: Mapped[uuid.UUID] = mapped_column(
        Uuid,
        ForeignKey("applications.id"),
        default=DEFAULT_APPLICATION_ID,
        server_default=str(DEFAULT_APPLICATION_ID),
    )
    target_url: Mapped[str] = mapped_column(Text)
    secret_key: Mapped[str | None] = mapped_column(EncryptedText)
    # After a rotation the previous secret signs and verifies too, until its expiry.
    previous_secret_key: Mapped[str | None] = mapped_column(EncryptedText)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    secret_rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    event_types: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    # JSON conditions on the body (shared/filters.py); null: every body.
    filter: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # Extra headers sent with every delivery, name → value (validated at the API).
    headers: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    # Deliveries per second that may start (services/dispatcher/rates.py); null: no limit.
    rate_limit: Mapped[int | None] = mapped_column(Integer)
    # Deliver one at a time, in the order the broker accepted them (dispatcher/ordered.py).
    ordered: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    deactivated_reason: Mapped[str | None] = mapped_column(Text)
    # Consecutive failed deliveries and when the streak began (auto-deactivation).
    failure_streak: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Event(Tenanted, Base):
    """Range-partitioned by received_at; the janitor drops whole partitions."""

    __tablename__ = "events"
    __table_args__ = (
        # Search (GET /status/events), newest first: all, by application, by type, both.
        Index("ix_events_received", "received_at"),
        Index("ix_events_application", "application_id", "received_at"),
        Index("ix_events_event_type", "event_type", "received_at"),
        Index("ix_events_application_event_type", "application_id", "event_type", "received_at"),
        {"postgresql_partition_by": "RANGE (received_at)"},
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    event_type: Mapped[str] = mapped_column(Text)
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    content_type: Mapped[str] = mapped_column(String(255))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    application_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, server_default=str(DEFAULT_APPLICATION_ID)
    )


class Backfill(Tenanted, Base):
    """A window of the events topic re-delivered to one subscription (trigger ``backfill``)."""

    __tablename__ = "backfills"
    __table_args__ = (
        Index("ix_backfills_subscription", "subscription_id", "created_at"),
        Index(
            "ix_backfills_running",
            "created_at",
            postgresql_where=text("status = 'running'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    subscription_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    application_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    status: Mapped[str] = mapped_column(String(16), default="running", server_default="running")
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    scanned: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    matched: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    published: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # {partition: next offset} and {partition: stop offset} (JSON keys are strings).
    positions: Mapped[dict[str, int] | None] = mapped_column(JSONB)
    end_offsets: Mapped[dict[str, int] | None] = mapped_column(JSONB)
    owner: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OrderedSequence(Base):
    """An ordered subscription's last sequence number, and which dispatcher process
    delivers its queue (a lease, so a crashed owner's queue is taken over)."""

    __tablename__ = "ordered_sequences"

    subscription_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    owner: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OrderedJob(Base):
    """A job of an ordered subscription, waiting for the ones before it (migration 0008)."""

    __tablename__ = "ordered_jobs"
    __table_args__ = (
        Index(
            "ix_ordered_jobs_waiting",
            "subscription_id",
            "seq",
            postgresql_where=text("done_at IS NULL"),
        ),
        Index("ix_ordered_jobs_done", "done_at", postgresql_where=text("done_at IS NOT NULL")),
    )

    subscription_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    headers: Mapped[bytes] = mapped_column(LargeBinary)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DeliveryAttempt(Tenanted, Base):
    """One row per HTTP attempt (the original `webhook_logs`), range-partitioned by created_at.

    No foreign key to subscriptions: deleting a subscription keeps its history readable.
    """

    __tablename__ = "delivery_attempts"
    __table_args__ = (
        Index("ix_attempts_delivery", "delivery_id", "created_at"),
        Index("ix_attempts_subscription", "subscription_id", "created_at"),
        Index("ix_attempts_event", "event_id"),
        Index("ix_attempts_created_status", "created_at", "status"),
        Index("ix_attempts_application", "application_id", "created_at"),
        # An application's dead letters, newest first (the portal's DLQ and its failure
        # filter): only FAILURE rows are in it, so it costs the write path almost nothing.
        Index(
            "ix_attempts_application_failures",
            "application_id",
            "created_at",
            postgresql_where=text("status = 'FAILURE'"),
        ),
        # Search (GET /status/deliveries, migration 0010): by event type, and the status
        # filters; the partial ones hold failed attempts only.
        Index("ix_attempts_event_type", "event_type", "created_at"),
        Index("ix_attempts_application_event_type", "application_id", "event_type", "created_at"),
        Index(
            "ix_attempts_unsettled",
            "status",
            "created_at",
            postgresql_where=text("status <> 'SUCCESS'"),
        ),
        Index(
            "ix_attempts_application_retrying",
            "application_id",
            "created_at",
            postgresql_where=text("status = 'FAILED_ATTEMPT'"),
        ),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    subscription_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    target_url: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(Text)
    attempt_number: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    error_details: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    # Who caused the attempt series: "ingest", "manual-retry", "replay".
    trigger: Mapped[str] = mapped_column(String(32), default="ingest", server_default="ingest")
    first_received_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    application_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, server_default=str(DEFAULT_APPLICATION_ID)
    )


# Columns in COPY order for the attempt writer (batched inserts on the hot path).
ATTEMPT_COLUMNS = (
    "id",
    "created_at",
    "delivery_id",
    "event_id",
    "subscription_id",
    "target_url",
    "event_type",
    "attempt_number",
    "status_code",
    "status",
    "error_details",
    "duration_ms",
    "response_excerpt",
    "trigger",
    "first_received_at",
    "application_id",
)
