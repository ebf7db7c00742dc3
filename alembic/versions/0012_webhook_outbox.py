"""The webhook outbox (`oauth2_webhook_outbox`, issue #14 item 3) and the hourly rollup of
the statistics (`oauth2_stats_hourly`, item 4).

The outbox: one row per notification (`token.reuse_detected`, `client.deactivated`,
`branch.needs_consent`, `upstream.refresh_failing`, `upstream.recovered`), inserted in
the same transaction as the change it reports, so an event exists exactly when its change
committed. The delivery loop (`notify.delivery`) sends it later, at least once, signed
per Standard Webhooks, and records each attempt on the row (`attempts`,
`next_attempt_at`, `last_error`: an error class or status, never a body), so retries
survive restarts. `lease_until` marks the row one loop is sending; `delivered_at` is set
after a 2xx answer.

Indexes (partial, so delivered rows cost nothing on the delivery path):
- `(subject, seq) WHERE delivered_at IS NULL`: "is there an earlier undelivered event of
  this subject" (in-order delivery per subject) is one index probe;
- `(next_attempt_at, seq) WHERE delivered_at IS NULL`: the due events;
- `delivered_at WHERE delivered_at IS NOT NULL`: removing delivered events after the
  retention.

`oauth2_stats_hourly` (hour, action, client_id, count; all but count the primary key)
holds audit-row counts per settled UTC hour for the statistics (issue #14 item 4): per
action for every client (`client_id` empty), and failed client authentications per
registered client (`?`: none). Their 24-hour figures then read a few rows per hour
instead of counting a day of audit rows on every request.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels = None
depends_on = None

_TABLE = "oauth2_webhook_outbox"
_PENDING = sa.text("delivered_at IS NULL")
_DELIVERED = sa.text("delivered_at IS NOT NULL")


def upgrade() -> None:
    timestamp = sa.DateTime(timezone=True)
    op.create_table(
        _TABLE,
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("event_id", sa.String(40), nullable=False, unique=True),
        sa.Column("event_type", sa.String(60), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", timestamp, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("next_attempt_at", timestamp, nullable=False),
        sa.Column("lease_until", timestamp, nullable=True),
        sa.Column("delivered_at", timestamp, nullable=True),
        sa.Column("last_error", sa.String(200), nullable=True),
    )
    where = {"postgresql_where": _PENDING, "sqlite_where": _PENDING}
    op.create_index("ix_oauth2_webhook_outbox_pending_subject", _TABLE, ["subject", "seq"], **where)
    op.create_index(
        "ix_oauth2_webhook_outbox_pending_due", _TABLE, ["next_attempt_at", "seq"], **where
    )
    op.create_table(
        "oauth2_stats_hourly",
        sa.Column("hour", timestamp, primary_key=True),
        sa.Column("action", sa.String(40), primary_key=True),
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "ix_oauth2_webhook_outbox_delivered",
        _TABLE,
        ["delivered_at"],
        postgresql_where=_DELIVERED,
        sqlite_where=_DELIVERED,
    )


def downgrade() -> None:
    for index in ("delivered", "pending_due", "pending_subject"):
        op.drop_index(f"ix_oauth2_webhook_outbox_{index}", table_name=_TABLE)
    op.drop_table(_TABLE)
    op.drop_table("oauth2_stats_hourly")
