"""Payload filters on subscriptions (``filter``: JSON conditions on the body).

The change-log trigger (0003) lists the columns the caches read; ``filter`` joins them.

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
_BEFORE = "target_url, secret_key, event_types, is_active, application_id"


def upgrade() -> None:
    op.execute("ALTER TABLE subscriptions ADD COLUMN filter jsonb")
    op.execute("DROP TRIGGER subscriptions_changed ON subscriptions")
    op.execute(_TRIGGER.format(columns=f"{_BEFORE}, filter"))


def downgrade() -> None:
    op.execute("DROP TRIGGER subscriptions_changed ON subscriptions")
    op.execute(_TRIGGER.format(columns=_BEFORE))
    op.execute("ALTER TABLE subscriptions DROP COLUMN filter")
