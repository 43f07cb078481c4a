"""Portal links and server-side browser sessions.

``portal_links``: one-use tokens an operator hands to an application's people; only a
SHA-256 of the token is stored. ``web_sessions``: the sessions of the operator dashboard
(``kind = 'ui'``) and of the portal (``kind = 'portal'``, scoped to one application). The
browser holds a random token; only its SHA-256 is stored, so a copy of the table opens no
session, and ending a row ends the session wherever its cookie was copied.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE portal_links (
            id uuid PRIMARY KEY,
            application_id uuid NOT NULL REFERENCES applications (id),
            token_hash bytea NOT NULL UNIQUE,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            used_at timestamptz
        )
        """
    )
    op.execute(
        """
        CREATE TABLE web_sessions (
            id uuid PRIMARY KEY,
            token_hash bytea NOT NULL UNIQUE,
            kind text NOT NULL CHECK (kind IN ('ui', 'portal')),
            application_id uuid REFERENCES applications (id),
            csrf text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            ended_at timestamptz,
            CHECK ((kind = 'portal') = (application_id IS NOT NULL))
        )
        """
    )
    op.execute("CREATE INDEX ix_web_sessions_expires ON web_sessions (expires_at)")
    op.execute("CREATE INDEX ix_portal_links_expires ON portal_links (expires_at)")


def downgrade() -> None:
    op.execute("DROP TABLE web_sessions")
    op.execute("DROP TABLE portal_links")
