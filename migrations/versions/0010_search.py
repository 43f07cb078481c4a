"""Search over events and deliveries (GET /status/events, GET /status/deliveries).

Every filter of the two lists, alone or inside one application (a scoped key's reads carry
``application_id``), walks an index newest first, so a page reads its own rows whatever
the time range (bench ``search``, 1,000,000 attempts: every page a few ms):

- attempts by event type, and by event type inside an application;
- attempts not SUCCESS by status (the "failed" and "retrying" filters); partial, so the
  write path pays only for failed attempts. ``ix_attempts_application_failures`` (0006)
  already serves an application's FAILURE rows; its retrying rows get their own;
- events by time, by application, by event type, and by event type inside an application
  (until now events were read by id only).

Built on the partitioned parents, so each partition (and every partition the janitor
creates later) gets its own; not CONCURRENTLY, which PostgreSQL cannot do for a
partitioned parent (as in 0006).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = {
    "ix_attempts_event_type": "delivery_attempts (event_type, created_at)",
    "ix_attempts_application_event_type": (
        "delivery_attempts (application_id, event_type, created_at)"
    ),
    "ix_attempts_unsettled": ("delivery_attempts (status, created_at) WHERE status <> 'SUCCESS'"),
    "ix_attempts_application_retrying": (
        "delivery_attempts (application_id, created_at) WHERE status = 'FAILED_ATTEMPT'"
    ),
    "ix_events_received": "events (received_at)",
    "ix_events_application": "events (application_id, received_at)",
    "ix_events_event_type": "events (event_type, received_at)",
    "ix_events_application_event_type": "events (application_id, event_type, received_at)",
}


def upgrade() -> None:
    for name, definition in INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON {definition}")


def downgrade() -> None:
    for name in reversed(INDEXES):
        op.execute(f"DROP INDEX {name}")
