"""Per-subscription rate limits (``rate_limit``: deliveries per second; null = none).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TRIGGER = """
CREATE TRIGGER subscriptions_changed
AFTER INSERT OR DELETE OR UPDATE OF {columns}
ON subscriptions
FOR EACH ROW EXECUTE FUNCTION hookstream_subscription_changed()
"""
_BEFORE = (
    "target_url, secret_key, event_types, is_active, application_id, filter, headers, "
    "previous_secret_key, previous_secret_expires_at"
)


def upgrade() -> None:
    op.execute("ALTER TABLE subscriptions ADD COLUMN rate_limit integer CHECK (rate_limit > 0)")
    op.execute("DROP TRIGGER subscriptions_changed ON subscriptions")
    op.execute(_TRIGGER.format(columns=f"{_BEFORE}, rate_limit"))


def downgrade() -> None:
    op.execute("DROP TRIGGER subscriptions_changed ON subscriptions")
    op.execute(_TRIGGER.format(columns=_BEFORE))
    op.execute("ALTER TABLE subscriptions DROP COLUMN rate_limit")
