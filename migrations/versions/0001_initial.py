"""Initial schema: subscriptions, time-partitioned events and delivery_attempts.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Creates the partitions of `parent` that cover [from_ts, to_ts), aligned on `width`
# from the Unix epoch, named <parent>_pYYYYMMDD_HHMMSS (UTC). Existing ones are kept.
# The migration calls it once so a fresh database can take rows at once; from then on
# the janitor (services/janitor/partitions.py) keeps partitions ahead of need, creating
# only uncovered gaps so a change of partition width never overlaps existing ranges.
ENSURE_PARTITIONS = """
CREATE OR REPLACE FUNCTION hookstream_ensure_partitions(
    parent text, width interval, from_ts timestamptz, to_ts timestamptz
) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    width_s double precision := extract(epoch FROM width);
    lo timestamptz := to_timestamp(floor(extract(epoch FROM from_ts) / width_s) * width_s);
    hi timestamptz;
    part text;
    created integer := 0;
BEGIN
    WHILE lo < to_ts LOOP
        hi := lo + width;
        part := parent || '_p' || to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MISS');
        IF to_regclass(part) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                part, parent, lo, hi
            );
            created := created + 1;
        END IF;
        lo := hi;
    END LOOP;
    RETURN created;
END $$;
"""


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE subscriptions (
            id uuid PRIMARY KEY,
            target_url text NOT NULL,
            secret_key text,
            event_types text[] NOT NULL DEFAULT '{}',
            is_active boolean NOT NULL DEFAULT true,
            deactivated_reason text,
            failure_streak integer NOT NULL DEFAULT 0,
            failing_since timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE events (
            id uuid NOT NULL,
            received_at timestamptz NOT NULL,
            event_type text NOT NULL,
            subscription_id uuid,
            content_type varchar(255) NOT NULL,
            body bytea NOT NULL,
            PRIMARY KEY (id, received_at)
        ) PARTITION BY RANGE (received_at)
        """
    )
    op.execute(
        """
        CREATE TABLE delivery_attempts (
            id uuid NOT NULL,
            created_at timestamptz NOT NULL,
            delivery_id uuid NOT NULL,
            event_id uuid NOT NULL,
            subscription_id uuid NOT NULL,
            target_url text NOT NULL,
            event_type text NOT NULL,
            attempt_number integer NOT NULL,
            status_code integer,
            status varchar(16) NOT NULL
                CHECK (status IN ('SUCCESS', 'FAILED_ATTEMPT', 'FAILURE')),
            error_details text,
            duration_ms integer,
            response_excerpt text,
            trigger varchar(32) NOT NULL DEFAULT 'ingest',
            first_received_at timestamptz,
            PRIMARY KEY (id, created_at)
        ) PARTITION BY RANGE (created_at)
        """
    )
    op.execute("CREATE INDEX ix_attempts_delivery ON delivery_attempts (delivery_id, created_at)")
    op.execute(
        "CREATE INDEX ix_attempts_subscription ON delivery_attempts (subscription_id, created_at)"
    )
    op.execute("CREATE INDEX ix_attempts_event ON delivery_attempts (event_id)")
    op.execute("CREATE INDEX ix_attempts_created_status ON delivery_attempts (created_at, status)")
    # A row outside every range partition lands here instead of failing the batch;
    # the janitor keeps ranges created ahead so this stays empty in normal operation.
    op.execute("CREATE TABLE events_default PARTITION OF events DEFAULT")
    op.execute("CREATE TABLE delivery_attempts_default PARTITION OF delivery_attempts DEFAULT")
    op.execute(ENSURE_PARTITIONS)
    for table in ("events", "delivery_attempts"):
        op.execute(
            f"SELECT hookstream_ensure_partitions('{table}', interval '6 hours', "
            "now() - interval '1 day', now() + interval '2 days')"
        )


def downgrade() -> None:
    op.execute("DROP TABLE delivery_attempts")
    op.execute("DROP TABLE events")
    op.execute("DROP TABLE subscriptions")
    op.execute(
        "DROP FUNCTION hookstream_ensure_partitions(text, interval, timestamptz, timestamptz)"
    )
