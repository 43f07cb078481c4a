"""Endpoint controls on subscriptions: payload filter, custom headers, secret rotation,
rate limit.

- ``filter``: JSON conditions on the body (shared/filters.py); null: every body.
- ``headers``: extra headers sent with every delivery, name → value.
- ``previous_secret_key`` / ``previous_secret_expires_at`` / ``secret_rotated_at``: after
  a rotation the previous secret signs and verifies until its expiry.
- ``rate_limit``: deliveries per second that may start; null: no limit.

The change-log trigger (0003) lists the columns the caches read: these join them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TRIGGER = """
CREATE TRIGGER subscriptions_changed
AFTER INSERT OR DELETE OR UPDATE OF {columns}
ON subscriptions
FOR EACH ROW EXECUTE FUNCTION hookstream_subscription_changed()
"""
_CACHED = "target_url, secret_key, event_types, is_active, application_id"
_ADDED = "filter, headers, previous_secret_key, previous_secret_expires_at, rate_limit"


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE subscriptions
            ADD COLUMN filter jsonb,
            ADD COLUMN headers jsonb,
            ADD COLUMN previous_secret_key text,
            ADD COLUMN previous_secret_expires_at timestamptz,
            ADD COLUMN secret_rotated_at timestamptz,
            ADD COLUMN rate_limit integer CHECK (rate_limit > 0)
        """
    )
    op.execute("DROP TRIGGER subscriptions_changed ON subscriptions")
    op.execute(_TRIGGER.format(columns=f"{_CACHED}, {_ADDED}"))


def downgrade() -> None:
    op.execute("DROP TRIGGER subscriptions_changed ON subscriptions")
    op.execute(_TRIGGER.format(columns=_CACHED))
    op.execute(
        """
        ALTER TABLE subscriptions
            DROP COLUMN filter,
            DROP COLUMN headers,
            DROP COLUMN previous_secret_key,
            DROP COLUMN previous_secret_expires_at,
            DROP COLUMN secret_rotated_at,
            DROP COLUMN rate_limit
        """
    )
