"""Single-use JWT ids across the deployment (`oauth2_used_jtis`, issue #15 item 2).

DPoP proofs (RFC 9449 §11.1) must not be replayed: each proof's `jti` (with its key's
thumbprint) is claimed once by inserting its SHA-256 here; a second insert of the same
one, from any worker or instance, finds the row and the proof is refused. Rows live until
`expires_at`, after which the proof's `iat` check refuses it anyway; the janitor deletes
them.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oauth2_used_jtis",
        sa.Column("jti_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("jti_hash"),
    )
    op.create_index("ix_oauth2_used_jtis_expires_at", "oauth2_used_jtis", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_oauth2_used_jtis_expires_at", table_name="oauth2_used_jtis")
    op.drop_table("oauth2_used_jtis")
