"""Initial schema: clients, users, consents, codes, tokens, audit log, signing keys.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-23 07:42:35.990262
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "oauth2_access_tokens",
        sa.Column("jti", sa.String(length=36), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("grant_type", sa.String(length=100), nullable=False),
        sa.Column("family_id", sa.String(length=36), nullable=True),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("jti"),
    )
    with op.batch_alter_table("oauth2_access_tokens", schema=None) as batch_op:
        batch_op.create_index("ix_oauth2_access_tokens_client_id", ["client_id"], unique=False)
        batch_op.create_index("ix_oauth2_access_tokens_expires_at", ["expires_at"], unique=False)
        batch_op.create_index("ix_oauth2_access_tokens_family_id", ["family_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_oauth2_access_tokens_user_id"), ["user_id"], unique=False
        )

    op.create_table(
        "oauth2_clients",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("secret_hash", sa.String(length=200), nullable=True),
        sa.Column("token_endpoint_auth_method", sa.String(length=40), nullable=False),
        sa.Column("grant_types", sa.JSON(), nullable=False),
        sa.Column("redirect_uris", sa.JSON(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("client_id"),
    )
    op.create_table(
        "oauth2_refresh_tokens",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("family_id", sa.String(length=36), nullable=False),
        sa.Column("parent_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("oauth2_refresh_tokens", schema=None) as batch_op:
        batch_op.create_index("ix_oauth2_refresh_tokens_client_id", ["client_id"], unique=False)
        batch_op.create_index("ix_oauth2_refresh_tokens_expires_at", ["expires_at"], unique=False)
        batch_op.create_index("ix_oauth2_refresh_tokens_family_id", ["family_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_oauth2_refresh_tokens_user_id"), ["user_id"], unique=False
        )

    op.create_table(
        "oauth2_signing_keys",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("alg", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("public_jwk", sa.JSON(), nullable=False),
        sa.Column("private_key_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("encryption_key_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kid"),
    )
    op.create_table(
        "oauth2_token_logs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=True),
        sa.Column("subject", sa.String(length=200), nullable=True),
        sa.Column("branch_id", sa.String(length=100), nullable=True),
        sa.Column("grant_type", sa.String(length=100), nullable=True),
        sa.Column("token_id", sa.String(length=64), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=400), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("risk_score", sa.Numeric(precision=3, scale=2), nullable=False),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("oauth2_token_logs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_oauth2_token_logs_action_created", ["action", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_oauth2_token_logs_client_created", ["client_id", "created_at"], unique=False
        )
        batch_op.create_index("ix_oauth2_token_logs_created_at", ["created_at"], unique=False)

    op.create_table(
        "oauth2_users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=200), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("subject"),
        sa.UniqueConstraint("username"),
    )
    op.create_table(
        "oauth2_authorization_codes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=True),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("code_challenge", sa.String(length=128), nullable=False),
        sa.Column("code_challenge_method", sa.String(length=10), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("consumed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("family_id", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["oauth2_users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code_hash"),
    )
    with op.batch_alter_table("oauth2_authorization_codes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_oauth2_authorization_codes_expires_at"), ["expires_at"], unique=False
        )

    op.create_table(
        "oauth2_consents",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["client_id"], ["oauth2_clients.client_id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["oauth2_users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "client_id"),
    )


def downgrade() -> None:
    op.drop_table("oauth2_consents")
    with op.batch_alter_table("oauth2_authorization_codes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_oauth2_authorization_codes_expires_at"))

    op.drop_table("oauth2_authorization_codes")
    op.drop_table("oauth2_users")
    with op.batch_alter_table("oauth2_token_logs", schema=None) as batch_op:
        batch_op.drop_index("ix_oauth2_token_logs_created_at")
        batch_op.drop_index("ix_oauth2_token_logs_client_created")
        batch_op.drop_index("ix_oauth2_token_logs_action_created")

    op.drop_table("oauth2_token_logs")
    op.drop_table("oauth2_signing_keys")
    with op.batch_alter_table("oauth2_refresh_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_oauth2_refresh_tokens_user_id"))
        batch_op.drop_index("ix_oauth2_refresh_tokens_family_id")
        batch_op.drop_index("ix_oauth2_refresh_tokens_expires_at")
        batch_op.drop_index("ix_oauth2_refresh_tokens_client_id")

    op.drop_table("oauth2_refresh_tokens")
    op.drop_table("oauth2_clients")
    with op.batch_alter_table("oauth2_access_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_oauth2_access_tokens_user_id"))
        batch_op.drop_index("ix_oauth2_access_tokens_family_id")
        batch_op.drop_index("ix_oauth2_access_tokens_expires_at")
        batch_op.drop_index("ix_oauth2_access_tokens_client_id")

    op.drop_table("oauth2_access_tokens")
