"""Ordered delivery: the subscriptions that opt in, and where their waiting jobs live.

An ordered subscription's jobs leave the deliveries topic as soon as they are stored
here, so a head that fails for hours holds no Kafka offset back and no partition waits
for it (services/dispatcher/ordered.py). ``seq`` is the subscription's own sequence, taken
from ``ordered_sequences`` in intake order, and sent as ``webhook-sequence``. Rows stay
after they end (``done_at``) so a job read again after a crash is recognised by its
delivery id and never sent out of order; the janitor drops them after the attempt
retention.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE subscriptions ADD COLUMN ordered boolean NOT NULL DEFAULT false")
    op.execute(
        """
        CREATE TABLE ordered_sequences (
            subscription_id uuid PRIMARY KEY,
            last_seq bigint NOT NULL DEFAULT 0,
            owner text,
            lease_until timestamptz
        )
        """
    )
    op.execute(
        """
        CREATE TABLE ordered_jobs (
            subscription_id uuid NOT NULL,
            seq bigint NOT NULL,
            delivery_id uuid NOT NULL UNIQUE,
            headers bytea NOT NULL,
            body bytea NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            next_at timestamptz NOT NULL DEFAULT now(),
            created_at timestamptz NOT NULL DEFAULT now(),
            done_at timestamptz,
            PRIMARY KEY (subscription_id, seq)
        )
        """
    )
    # The head of every queue: the oldest job not yet final.
    op.execute(
        "CREATE INDEX ix_ordered_jobs_waiting ON ordered_jobs (subscription_id, seq) "
        "WHERE done_at IS NULL"
    )
    op.execute(
        "CREATE INDEX ix_ordered_jobs_done ON ordered_jobs (done_at) WHERE done_at IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP TABLE ordered_jobs")
    op.execute("DROP TABLE ordered_sequences")
    op.execute("ALTER TABLE subscriptions DROP COLUMN ordered")
