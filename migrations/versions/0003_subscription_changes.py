"""A change log of subscriptions, written by a trigger, that every process polls.

Each insert, delete, and change of a column the hot paths read, logs the subscription's
id with the id of its transaction (``txid``). Processes poll ``txid >= <watermark>``
(``shared/subscriptions.py``) and re-read only the rows they hold. Failure-streak
bookkeeping (``failure_streak``, ``failing_since``) is not logged: it changes on every
failed delivery and no cache reads it. A column added to ``SubscriptionView`` must be
added to the trigger's column list here (in a new migration).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE subscription_changes (
            id bigserial PRIMARY KEY,
            txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
            subscription_id uuid NOT NULL,
            application_id uuid NOT NULL,
            changed_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX ix_subscription_changes_txid ON subscription_changes (txid)")
    op.execute(
        "CREATE INDEX ix_subscription_changes_changed_at ON subscription_changes (changed_at)"
    )
    op.execute(
        """
        CREATE FUNCTION hookstream_subscription_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                INSERT INTO subscription_changes (subscription_id, application_id)
                VALUES (OLD.id, OLD.application_id);
                RETURN OLD;
            END IF;
            INSERT INTO subscription_changes (subscription_id, application_id)
            VALUES (NEW.id, NEW.application_id);
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER subscriptions_changed
        AFTER INSERT OR DELETE
            OR UPDATE OF target_url, secret_key, event_types, is_active, application_id
        ON subscriptions
        FOR EACH ROW EXECUTE FUNCTION hookstream_subscription_changed()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER subscriptions_changed ON subscriptions")
    op.execute("DROP FUNCTION hookstream_subscription_changed()")
    op.execute("DROP TABLE subscription_changes")
