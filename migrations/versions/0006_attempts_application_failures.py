"""An application's dead letters by time: a partial index of FAILURE attempts.

The portal's dead letters and its "failed" filter walk one application's attempts newest
first for FAILURE rows. Through ``ix_attempts_application`` that reads every newer
attempt from the heap to look at its status: 80,000 rows and ~85 ms when the failures
are older than the successes (bench ``ui``). This index holds FAILURE rows only, so the
write path pays for dead letters alone; the same pages take ~15 ms with it.

Built on the partitioned parent, so each partition (and every partition the janitor
creates later) gets its own; like the other indexes on this table it is not built
CONCURRENTLY (PostgreSQL cannot for a partitioned parent).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX ix_attempts_application_failures ON delivery_attempts "
        "(application_id, created_at) WHERE status = 'FAILURE'"
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_attempts_application_failures")
