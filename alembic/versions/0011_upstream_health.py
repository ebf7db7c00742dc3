"""Upstream grant health and the proactive refresh worker's schedule (issue #14 items 1
and 2).

`oauth2_upstream_credentials` gains (nullable; existing rows read as "never failed, due
by expiry"):
- `refresh_failing_since` (UTC): the first failed refresh of the current run of
  failures (cleared by a success or a new consent). With `refresh_failures` it makes the
  grant's health `refresh_failing` (`upstream.health`).
- `last_refresh_error_class` (≤ 40 characters): what kind of failure the last was
  (`upstream_unavailable`, `provider_refused`, `misconfigured`, `invalid_grant`,
  `scope_narrowed`); never a token.
- `next_refresh_at` (UTC): the earliest time the refresh worker retries a grant whose
  refresh failed (exponential backoff); NULL: due by its token's expiry.

An index on `access_expires_at` lets the worker find the grants expiring soon without
reading every grant.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels = None
depends_on = None

_TABLE = "oauth2_upstream_credentials"
_INDEX = "ix_oauth2_upstream_credentials_access_expires_at"


def upgrade() -> None:
    with op.batch_alter_table(_TABLE) as batch:
        batch.add_column(
            sa.Column("refresh_failing_since", sa.DateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("last_refresh_error_class", sa.String(40), nullable=True))
        batch.add_column(sa.Column("next_refresh_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(_INDEX, _TABLE, ["access_expires_at"])


def downgrade() -> None:
    op.drop_index(_INDEX, table_name=_TABLE)
    with op.batch_alter_table(_TABLE) as batch:
        for column in ("next_refresh_at", "last_refresh_error_class", "refresh_failing_since"):
            batch.drop_column(column)
