"""Upstream providers: branches, client branch grants, upstream grants (issue 3).

- `oauth2_branches`: locations, by external `branch_id`.
- `oauth2_client_branches`: which clients may broker tokens for which branch (`*`: all).
- `oauth2_upstream_credentials`: one upstream grant per (provider, account `sub`), tokens
  as AES-256-GCM ciphertext with the keyring key id.
- `oauth2_branch_upstream_links`: a branch's grant per provider (many branches, one grant).
- `oauth2_upstream_states`: pending connections (`state` digest, encrypted PKCE verifier).

Only CREATE TABLE / CREATE INDEX: the same statements work on SQLite and PostgreSQL.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oauth2_branches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("branch_id", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("contact_email", sa.String(length=320), nullable=True),
        sa.Column("google_account_id", sa.String(length=100), nullable=True),
        sa.Column("google_location_id", sa.String(length=100), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("branch_id"),
    )
    op.create_table(
        "oauth2_client_branches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("branch_id", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["client_id"], ["oauth2_clients.client_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("client_id", "branch_id"),
    )
    op.create_index("ix_oauth2_client_branches_branch_id", "oauth2_client_branches", ["branch_id"])
    op.create_table(
        "oauth2_upstream_credentials",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("account_sub", sa.String(length=255), nullable=False),
        sa.Column("account_email", sa.String(length=320), nullable=True),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("encryption_key_id", sa.String(length=64), nullable=False),
        sa.Column("access_token_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("refresh_token_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("access_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("needs_consent", sa.Boolean(), nullable=False),
        sa.Column("consent_error", sa.String(length=400), nullable=True),
        sa.Column("last_refreshed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider", "account_sub"),
    )
    op.create_table(
        "oauth2_branch_upstream_links",
        sa.Column("branch_id", sa.String(length=100), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("credential_id", sa.String(length=36), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["branch_id"], ["oauth2_branches.branch_id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["credential_id"], ["oauth2_upstream_credentials.id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("branch_id", "provider"),
    )
    op.create_index(
        "ix_oauth2_branch_upstream_links_credential_id",
        "oauth2_branch_upstream_links",
        ["credential_id"],
    )
    op.create_table(
        "oauth2_upstream_states",
        sa.Column("state_hash", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("branch_id", sa.String(length=100), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("encryption_key_id", sa.String(length=64), nullable=False),
        sa.Column("code_verifier_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["branch_id"], ["oauth2_branches.branch_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("state_hash"),
    )
    op.create_index(
        "ix_oauth2_upstream_states_expires_at", "oauth2_upstream_states", ["expires_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_oauth2_upstream_states_expires_at", table_name="oauth2_upstream_states")
    op.drop_table("oauth2_upstream_states")
    op.drop_index(
        "ix_oauth2_branch_upstream_links_credential_id",
        table_name="oauth2_branch_upstream_links",
    )
    op.drop_table("oauth2_branch_upstream_links")
    op.drop_table("oauth2_upstream_credentials")
    op.drop_index("ix_oauth2_client_branches_branch_id", table_name="oauth2_client_branches")
    op.drop_table("oauth2_client_branches")
    op.drop_table("oauth2_branches")
