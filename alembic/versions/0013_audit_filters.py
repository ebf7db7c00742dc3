"""Find anything, pull incrementally (#11 items 4 and 7): indexes for the audit filters
`ip` (CIDR), `token_id` and `request_id` (the watermark `after` reads `seal_seq` through
`ix_oauth2_token_logs_seal_seq` of migration 0009).

- `oauth2_inet(text)` (PostgreSQL): the stored `ip` text as an `inet` host address, NULL
  when it is not one (the column holds what the server was told, so a plain cast could
  fail, and a network text is not an address). IMMUTABLE, so it can be indexed:
  `ix_oauth2_token_logs_inet` is a B-tree on it; a network is one range of it, first to
  last address (`audit.ipfilter`), an index range scan with nothing to recheck per row.
  SQLite has neither; its CIDR filter is a function call per row
  (`audit.ipfilter.prepare`).
- (`token_id`, `created_at`, `id`) and (`request_id`, `created_at`, `id`), partial on
  NOT NULL: the filters' first page is an index range at any table size.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels = None
depends_on = None

TABLE = "oauth2_token_logs"
# name → (columns, partial condition)
INDEXES = {
    "ix_oauth2_token_logs_token_created": ("token_id, created_at, id", "token_id IS NOT NULL"),
    "ix_oauth2_token_logs_request_created": (
        "request_id, created_at, id",
        "request_id IS NOT NULL",
    ),
}
INET_FUNCTION = """
CREATE OR REPLACE FUNCTION oauth2_inet(value text) RETURNS inet
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
  address inet;
BEGIN
  IF strpos(value, '/') > 0 THEN
    RETURN NULL;  -- a network (even a /32), not an address: as Python's ip_address
  END IF;
  address := value::inet;
  RETURN address;
EXCEPTION WHEN OTHERS THEN  -- not an address: no inet, never an error
  RETURN NULL;
END $$
"""


def upgrade() -> None:
    for name, (columns, where) in INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON {TABLE} ({columns}) WHERE {where}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(INET_FUNCTION)
        op.execute(
            # not partial: PostgreSQL estimates rows from an expression index's statistics
            # only when it has no predicate, and a /24 needs that estimate to be planned
            f"CREATE INDEX ix_oauth2_token_logs_inet ON {TABLE} (oauth2_inet(ip), created_at, id)"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_oauth2_token_logs_inet")
        op.execute("DROP FUNCTION oauth2_inet(text)")
    for name in INDEXES:
        op.execute(f"DROP INDEX {name}")
