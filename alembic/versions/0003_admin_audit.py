"""Admin API and audit trail: sealing columns, partitioning, indexes (issue 4).

- `oauth2_token_logs` gains `family_id` (backfilled from `details`), and the hash-chain
  columns `seal_seq`, `prev_hash`, `row_hash`.
- Indexes for audit queries: every filter column followed by (`created_at`, `id`), the
  keyset order; partial indexes for token families and for risky rows.
- PostgreSQL: the table becomes `PARTITION BY RANGE (created_at)`, one partition per
  month (named `oauth2_token_logs_pYYYYMM`, UTC bounds) from the oldest row to two months
  ahead, plus `oauth2_token_logs_default` as a safety net the janitor empties. The
  primary key becomes (`id`, `created_at`) because it must include the partition key;
  the id sequence is kept. SQLite keeps one table with `id` as its rowid key.
- `oauth2_audit_chain`: the one row holding the chain's head and anchor.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None

TABLE = "oauth2_token_logs"
OLD_INDEXES = {
    "ix_oauth2_token_logs_action_created": ["action", "created_at"],
    "ix_oauth2_token_logs_client_created": ["client_id", "created_at"],
    "ix_oauth2_token_logs_created_at": ["created_at"],
}
NEW_INDEXES = {
    "ix_oauth2_token_logs_created_id": ["created_at", "id"],
    "ix_oauth2_token_logs_client_created": ["client_id", "created_at", "id"],
    "ix_oauth2_token_logs_action_created": ["action", "created_at", "id"],
    "ix_oauth2_token_logs_subject_created": ["subject", "created_at", "id"],
    "ix_oauth2_token_logs_branch_created": ["branch_id", "created_at", "id"],
    "ix_oauth2_token_logs_ip_created": ["ip", "created_at", "id"],
}
PARTIAL_INDEXES = {
    "ix_oauth2_token_logs_family": (["family_id"], "family_id IS NOT NULL"),
    "ix_oauth2_token_logs_risky": (["created_at", "id"], "risk_score > 0"),
}
BASE_COLUMNS = [
    "id",
    "created_at",
    "action",
    "client_id",
    "subject",
    "branch_id",
    "grant_type",
    "token_id",
    "ip",
    "user_agent",
    "request_id",
    "risk_score",
    "flags",
    "details",
]
SEAL_COLUMNS = ["family_id", "seal_seq", "prev_hash", "row_hash"]
GENESIS_HASH = "0" * 64


def _content_columns() -> list[sa.Column]:
    return [
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
    ]


def _seal_columns() -> list[sa.Column]:
    return [
        sa.Column("family_id", sa.String(length=36), nullable=True),
        sa.Column("seal_seq", sa.BigInteger(), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=True),
        sa.Column("row_hash", sa.String(length=64), nullable=True),
    ]


def _create_new_indexes(create_index) -> None:  # type: ignore[no-untyped-def]
    for name, columns in NEW_INDEXES.items():
        create_index(name, columns)
    for name, (columns, where) in PARTIAL_INDEXES.items():
        create_index(name, columns, postgresql_where=sa.text(where), sqlite_where=sa.text(where))


def _upgrade_sqlite() -> None:
    with op.batch_alter_table(TABLE) as batch:
        for column in _seal_columns():
            batch.add_column(column)
        for name in OLD_INDEXES:
            batch.drop_index(name)
    op.execute(
        f"UPDATE {TABLE} SET family_id = json_extract(details, '$.family_id') "  # noqa: S608
        "WHERE json_type(details, '$.family_id') = 'text'"
    )
    with op.batch_alter_table(TABLE) as batch:
        _create_new_indexes(batch.create_index)


def _upgrade_postgresql() -> None:
    op.execute(f"ALTER TABLE {TABLE} RENAME TO {TABLE}_old")
    op.execute(f"ALTER TABLE {TABLE}_old RENAME CONSTRAINT {TABLE}_pkey TO {TABLE}_old_pkey")
    for name in OLD_INDEXES:
        op.execute(f"DROP INDEX {name}")
    op.create_table(
        TABLE,
        sa.Column(
            "id",
            sa.BigInteger(),
            server_default=sa.text(f"nextval('{TABLE}_id_seq'::regclass)"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        *_content_columns(),
        *_seal_columns(),
        sa.PrimaryKeyConstraint("id", "created_at", name=f"{TABLE}_pkey"),
        postgresql_partition_by="RANGE (created_at)",
    )
    op.execute(f"ALTER SEQUENCE {TABLE}_id_seq OWNED BY {TABLE}.id")
    op.execute(f"CREATE TABLE {TABLE}_default PARTITION OF {TABLE} DEFAULT")
    # One partition per month (UTC) from the oldest row to two months ahead.
    op.execute(
        f"""
        DO $$
        DECLARE m timestamp;
        BEGIN
          FOR m IN SELECT generate_series(
              date_trunc('month', LEAST(
                  COALESCE((SELECT min(created_at) FROM {TABLE}_old), now()), now())
                  AT TIME ZONE 'UTC'),
              date_trunc('month', now() AT TIME ZONE 'UTC') + interval '2 months',
              interval '1 month')
          LOOP
            EXECUTE format(
              'CREATE TABLE %I PARTITION OF {TABLE} FOR VALUES FROM (%L) TO (%L)',
              '{TABLE}_p' || to_char(m, 'YYYYMM'),
              m AT TIME ZONE 'UTC',
              (m + interval '1 month') AT TIME ZONE 'UTC');
          END LOOP;
        END $$
        """  # noqa: S608 (constant names)
    )
    columns = ", ".join(BASE_COLUMNS)
    op.execute(
        f"INSERT INTO {TABLE} ({columns}, family_id) "  # noqa: S608
        f"SELECT {columns}, details->>'family_id' FROM {TABLE}_old"
    )
    op.drop_table(f"{TABLE}_old")
    _create_new_indexes(lambda name, cols, **kw: op.create_index(name, TABLE, cols, **kw))


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _upgrade_postgresql()
    else:
        _upgrade_sqlite()
    chain = op.create_table(
        "oauth2_audit_chain",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("head_seq", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("head_created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("head_log_id", sa.BigInteger(), nullable=True),
        sa.Column("anchor_seq", sa.BigInteger(), nullable=False),
        sa.Column("anchor_hash", sa.String(length=64), nullable=False),
        sa.Column("anchor_created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("anchor_log_id", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute(
        chain.insert().values(
            id=1,
            head_seq=0,
            head_hash=GENESIS_HASH,
            anchor_seq=0,
            anchor_hash=GENESIS_HASH,
            updated_at=sa.func.now(),
        )
    )


def _downgrade_postgresql() -> None:
    op.execute(f"ALTER TABLE {TABLE} RENAME TO {TABLE}_partitioned")
    op.execute(f"ALTER TABLE {TABLE}_partitioned RENAME CONSTRAINT {TABLE}_pkey TO {TABLE}_p_pkey")
    for name in [*NEW_INDEXES, *PARTIAL_INDEXES]:
        op.execute(f"DROP INDEX {name}")
    op.create_table(
        TABLE,
        sa.Column(
            "id",
            sa.BigInteger(),
            server_default=sa.text(f"nextval('{TABLE}_id_seq'::regclass)"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        *_content_columns(),
        sa.PrimaryKeyConstraint("id", name=f"{TABLE}_pkey"),
    )
    op.execute(f"ALTER SEQUENCE {TABLE}_id_seq OWNED BY {TABLE}.id")
    columns = ", ".join(BASE_COLUMNS)
    op.execute(
        f"INSERT INTO {TABLE} ({columns}) SELECT {columns} FROM {TABLE}_partitioned"  # noqa: S608
    )
    op.execute(f"DROP TABLE {TABLE}_partitioned CASCADE")
    for name, columns_ in OLD_INDEXES.items():
        op.create_index(name, TABLE, columns_)


def downgrade() -> None:
    op.drop_table("oauth2_audit_chain")
    if op.get_bind().dialect.name == "postgresql":
        _downgrade_postgresql()
        return
    with op.batch_alter_table(TABLE) as batch:
        for name in [*NEW_INDEXES, *PARTIAL_INDEXES]:
            batch.drop_index(name)
        for column in SEAL_COLUMNS:
            batch.drop_column(column)
        for name, columns in OLD_INDEXES.items():
            batch.create_index(name, columns)
