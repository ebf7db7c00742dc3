"""Completeness an auditor can prove (issue #11 item 5): signed checkpoints, signed
retention records, a sealing horizon, chain order by `seal_seq`.

- `oauth2_audit_checkpoints`: one signed checkpoint per seal transaction (seq, row_hash,
  time, kid, the compact JWS).
- `oauth2_audit_retention`: one signed record per retention drop (seq range, time range,
  rows, last removed hash, policy, who ran it, the JWS).
- `oauth2_audit_chain` gains `sealed_through` (every row created at or before it is
  sealed; an unsealed one is a straggler for `oauth2-server audit repair`) and
  `baseline_seq`/`baseline_hash`: the anchor when retention records began, where their
  chain starts. An existing chain keeps its anchor as the baseline and its head's
  `created_at` as `sealed_through`, so rows an older release left unsealed inside the
  sealed range show up as stragglers.
- `oauth2_token_logs` gets an index on `seal_seq` (verification walks that order) and a
  partial index on unsealed rows (the sealer and the straggler check read them). On
  PostgreSQL both are partitioned indexes: every month partition gets them, and one
  attached later gets them on ATTACH.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels = None
depends_on = None

TABLE = "oauth2_token_logs"
GENESIS_HASH = "0" * 64
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIME = sa.DateTime(timezone=True)


def _statement_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("statement", sa.Text(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "oauth2_audit_checkpoints",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("seq", sa.BigInteger(), nullable=False, unique=True),
        sa.Column("row_hash", sa.String(64), nullable=False),
        *_statement_columns(),
    )
    op.create_table(
        "oauth2_audit_retention",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("first_seq", sa.BigInteger(), nullable=False, unique=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("from_at", UTC_TIME, nullable=False),
        sa.Column("to_at", UTC_TIME, nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.Column("policy_days", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        *_statement_columns(),
    )
    with op.batch_alter_table("oauth2_audit_chain") as batch:
        batch.add_column(sa.Column("sealed_through", UTC_TIME, nullable=True))
        batch.add_column(
            sa.Column("baseline_seq", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("baseline_hash", sa.String(64), nullable=False, server_default=GENESIS_HASH)
        )
    op.execute(
        "UPDATE oauth2_audit_chain SET sealed_through = head_created_at, "
        "baseline_seq = anchor_seq, baseline_hash = anchor_hash"
    )
    sealed = sa.text("seal_seq IS NOT NULL")  # the same as 0013's (IF NOT EXISTS there)
    op.create_index(
        "ix_oauth2_token_logs_seal_seq",
        TABLE,
        ["seal_seq"],
        postgresql_where=sealed,
        sqlite_where=sealed,
    )
    where = sa.text("seal_seq IS NULL")
    op.create_index(
        "ix_oauth2_token_logs_unsealed",
        TABLE,
        ["created_at", "id"],
        postgresql_where=where,
        sqlite_where=where,
    )


def downgrade() -> None:
    op.drop_index("ix_oauth2_token_logs_unsealed", TABLE)
    op.execute("DROP INDEX IF EXISTS ix_oauth2_token_logs_seal_seq")  # 0013 may have
    with op.batch_alter_table("oauth2_audit_chain") as batch:
        batch.drop_column("baseline_hash")
        batch.drop_column("baseline_seq")
        batch.drop_column("sealed_through")
    op.drop_table("oauth2_audit_retention")
    op.drop_table("oauth2_audit_checkpoints")
