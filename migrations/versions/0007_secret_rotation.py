"""Secret rotation: the previous secret stays valid until the overlap ends.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TRIGGER = """
CREATE TRIGGER subscriptions_changed
AFTER INSERT OR DELETE OR UPDATE OF {columns}
ON subscriptions
FOR EACH ROW EXECUTE FUNCTION hookstream_subscription_changed()
"""
_BEFORE = "target_url, secret_key, event_types, is_active, application_id, filter, headers"


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE subscriptions
            ADD COLUMN previous_secret_key text,
            ADD COLUMN previous_secret_expires_at timestamptz,
            ADD COLUMN secret_rotated_at timestamptz
        """
    )
    op.execute("DROP TRIGGER subscriptions_changed ON subscriptions")
    op.execute(
        _TRIGGER.format(columns=f"{_BEFORE}, previous_secret_key, previous_secret_expires_at")
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER subscriptions_changed ON subscriptions")
    op.execute(_TRIGGER.format(columns=_BEFORE))
    op.execute(
        """
        ALTER TABLE subscriptions
            DROP COLUMN previous_secret_key,
            DROP COLUMN previous_secret_expires_at,
            DROP COLUMN secret_rotated_at
        """
    )
