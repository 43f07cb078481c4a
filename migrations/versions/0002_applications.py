"""Applications (tenants) and their scoped API keys.

Every existing subscription moves into the application with uid ``default``; every
existing event and attempt row is marked as that application's, because every
subscription it could belong to is.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# uuid5(NAMESPACE_URL, "hookstream:application:default"): every process knows it without a
# query (shared.models.DEFAULT_APPLICATION_ID).
DEFAULT_APPLICATION_ID = "c566d359-ab12-5ca5-899c-c2a712f3e621"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE applications (
            id uuid PRIMARY KEY,
            uid text CHECK (uid ~ '^[A-Za-z0-9_.-]{1,100}$'),
            name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
            metadata jsonb NOT NULL DEFAULT '{}',
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            deleted_at timestamptz
        )
        """
    )
    # A deleted application frees its uid for a new one; its rows stay for history.
    op.execute(
        "CREATE UNIQUE INDEX ux_applications_uid ON applications (uid) WHERE deleted_at IS NULL"
    )
    op.execute("CREATE INDEX ix_applications_created ON applications (created_at DESC, id DESC)")
    op.execute(
        f"""
        INSERT INTO applications (id, uid, name)
        VALUES ('{DEFAULT_APPLICATION_ID}', 'default', 'Default application')
        """  # noqa: S608 (a constant of this file, not input)
    )
    op.execute(
        f"""
        ALTER TABLE subscriptions
            ADD COLUMN application_id uuid NOT NULL DEFAULT '{DEFAULT_APPLICATION_ID}'
                REFERENCES applications (id)
        """
    )
    # The default stays: a row written without an application (an older tool, a script)
    # lands where the flat routes put it, as it did before applications existed.
    op.execute(
        "CREATE INDEX ix_subscriptions_application "
        "ON subscriptions (application_id, created_at DESC, id DESC)"
    )
    # History is scoped by a column of its own, not by a join to subscriptions: deleting
    # a subscription keeps its attempts readable, by its application too. A constant
    # default is metadata only in PostgreSQL 11+ (no table rewrite, however many rows),
    # marks every existing row as the default application's, and covers rows that a
    # dispatcher of the previous release writes while the services roll.
    for table in ("events", "delivery_attempts"):
        op.execute(
            f"ALTER TABLE {table} ADD COLUMN application_id uuid NOT NULL "
            f"DEFAULT '{DEFAULT_APPLICATION_ID}'"
        )
    op.execute(
        "CREATE INDEX ix_attempts_application ON delivery_attempts (application_id, created_at)"
    )
    op.execute(
        """
        CREATE TABLE api_keys (
            id uuid PRIMARY KEY,
            application_id uuid NOT NULL REFERENCES applications (id),
            name text NOT NULL,
            prefix text NOT NULL,
            key_hash bytea NOT NULL UNIQUE,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz,
            revoked_at timestamptz,
            last_used_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX ix_api_keys_application ON api_keys (application_id, created_at)")


def downgrade() -> None:
    op.execute("DROP TABLE api_keys")
    op.execute("DROP INDEX ix_attempts_application")
    for table in ("events", "delivery_attempts"):
        op.execute(f"ALTER TABLE {table} DROP COLUMN application_id")
    op.execute("ALTER TABLE subscriptions DROP COLUMN application_id")
    op.execute("DROP TABLE applications")
