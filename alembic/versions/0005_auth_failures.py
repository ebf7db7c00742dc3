"""Failure-limiter counters shared by every worker and instance (`oauth2_auth_failures`).

One row per limited key (a client id, an IP, a username, a (username, IP) pair or a
trusted-device cookie), named only by `key_hash` (HMAC-SHA256 hex of the key text under a
keyring-derived key, so no username or IP is stored): the start of its fixed window (UTC)
and the attempts counted in it. Written with one `INSERT … ON CONFLICT DO UPDATE …
RETURNING count` per attempt; the janitor deletes windows that have ended. Existing
argon2id client-secret hashes are left as they are: they are replaced by the `sha256$`
form at each client's next successful authentication.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oauth2_auth_failures",
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key_hash"),
    )
    op.create_index(
        "ix_oauth2_auth_failures_window_start", "oauth2_auth_failures", ["window_start"]
    )


def downgrade() -> None:
    op.drop_index("ix_oauth2_auth_failures_window_start", table_name="oauth2_auth_failures")
    op.drop_table("oauth2_auth_failures")
