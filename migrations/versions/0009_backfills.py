"""Backfills: re-delivering a window of the events topic to one subscription.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE backfills (
            id uuid PRIMARY KEY,
            subscription_id uuid NOT NULL,
            application_id uuid NOT NULL,
            status varchar(16) NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'done', 'cancelled', 'failed')),
            since timestamptz NOT NULL,
            until timestamptz NOT NULL,
            scanned bigint NOT NULL DEFAULT 0,
            matched bigint NOT NULL DEFAULT 0,
            published bigint NOT NULL DEFAULT 0,
            error text,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            -- {partition: next offset to read} and {partition: offset to stop at}, both
            -- fixed when the worker starts it, so a restarted worker resumes, not restarts.
            positions jsonb,
            end_offsets jsonb,
            -- The worker running it and until when its claim holds (renewed with each
            -- progress save); a claim that lapsed is taken over by another worker.
            owner text,
            lease_until timestamptz
        )
        """
    )
    op.execute("CREATE INDEX ix_backfills_subscription ON backfills (subscription_id, created_at)")
    # Workers look for running backfills every second; the finished ones are the bulk.
    op.execute(
        "CREATE INDEX ix_backfills_running ON backfills (created_at) WHERE status = 'running'"
    )


def downgrade() -> None:
    op.execute("DROP TABLE backfills")
