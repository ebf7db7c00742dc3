"""Upstream grants survive their provider's faults (#14 item 5): a refresh-in-progress
mark, the stored access token's lifetime, and the last refresh failure.

`oauth2_upstream_credentials` gains (all nullable or defaulted; existing rows read as
"no refresh in progress, lifetime unknown, never failed"):
- `refresh_started_at`, `refresh_lease_until` (UTC): a refresh is in flight at the
  provider. Set in its own committed transaction before the provider is called and
  cleared with the outcome, so a process that dies mid-call leaves a mark an admin sees
  (`branches status`); after `refresh_lease_until` another refresher may take over.
- `access_issued_at` (UTC): when the stored access token was obtained, so its lifetime
  (`access_expires_at - access_issued_at`) is known when the provider's is short.
- `last_refresh_error` (≤ 400 characters, never a token), `last_refresh_error_at` (UTC)
  and `refresh_failures` (consecutive failed refreshes; 0 after a success).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels = None
depends_on = None

_TABLE = "oauth2_upstream_credentials"


def upgrade() -> None:
    with op.batch_alter_table(_TABLE) as batch:
        batch.add_column(sa.Column("refresh_started_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("refresh_lease_until", sa.DateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("access_issued_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_refresh_error", sa.String(400), nullable=True))
        batch.add_column(
            sa.Column("last_refresh_error_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch.add_column(
            sa.Column("refresh_failures", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table(_TABLE) as batch:
        for column in (
            "refresh_failures",
            "last_refresh_error_at",
            "last_refresh_error",
            "access_issued_at",
            "refresh_lease_until",
            "refresh_started_at",
        ):
            batch.drop_column(column)
