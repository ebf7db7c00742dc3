"""Refresh token families get an absolute end (OAUTH2_REFRESH_FAMILY_MAX_AGE).

`oauth2_refresh_tokens.family_expires_at` (UTC, nullable): set when a family starts at the
authorization code exchange and copied to each rotated token, whose `expires_at` never
passes it. Rows written before this revision keep NULL (no absolute limit); their sliding
`expires_at` (OAUTH2_REFRESH_TOKEN_TTL) still applies, and their rotations stay uncapped.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("oauth2_refresh_tokens") as batch:
        batch.add_column(sa.Column("family_expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("oauth2_refresh_tokens") as batch:
        batch.drop_column("family_expires_at")
