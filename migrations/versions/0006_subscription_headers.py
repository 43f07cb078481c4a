"""Custom outgoing headers on subscriptions (``headers``: a JSON object name → value).

The change-log trigger watches the new column too.

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

_TRIGGER = """
CREATE TRIGGER subscriptions_changed
AFTER INSERT OR DELETE OR UPDATE OF {columns}
ON subscriptions
FOR EACH ROW EXECUTE FUNCTION hookstream_subscription_changed()
"""
_BEFORE = "target_url, secret_key, event_types, is_active, application_id, filter"


def upgrade() -> None:
    op.execute("ALTER TABLE subscriptions ADD COLUMN headers jsonb")
    op.execute("DROP TRIGGER subscriptions_changed ON subscriptions")
    op.execute(_TRIGGER.format(columns=f"{_BEFORE}, headers"))


def downgrade() -> None:
    op.execute("DROP TRIGGER subscriptions_changed ON subscriptions")
    op.execute(_TRIGGER.format(columns=_BEFORE))
    op.execute("ALTER TABLE subscriptions DROP COLUMN headers")
