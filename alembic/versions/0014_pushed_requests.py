"""Pushed authorization requests (RFC 9126, issue #15 item 4): `oauth2_pushed_requests`.

One row per pushed request, named only by the SHA-256 of its `request_uri` (the URI is a
bearer reference to the request, so it is stored like a code): the client that pushed it,
the validated authorization-request parameters as JSON, and when it expires (at most 60 s
after the push). `/oauth2/authorize` takes the row once (`DELETE … RETURNING`); the janitor
deletes rows that expired unused.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oauth2_pushed_requests",
        sa.Column("request_uri_hash", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_uri_hash"),
    )
    op.create_index(
        "ix_oauth2_pushed_requests_expires_at", "oauth2_pushed_requests", ["expires_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_oauth2_pushed_requests_expires_at", table_name="oauth2_pushed_requests")
    op.drop_table("oauth2_pushed_requests")
