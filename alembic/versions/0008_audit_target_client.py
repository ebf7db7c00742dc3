"""Find every change to a client (#11 item 4): an index on the audit rows' target client.

An `admin_*` row names the admin client that acted in `client_id` and the client the
change is about in `details.target_client_id`. The `target_client_id` filter reads that
JSON key; this partial expression index (only rows that have the key: admin changes)
keeps "every change to client X" an index scan at any table size, and costs nothing on
the token rows, which never carry the key.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels = None
depends_on = None

_INDEX = "ix_oauth2_token_logs_target_client"
# The one definition of the indexed expression per dialect (audit.query uses the same).
_EXPRESSION = {
    "postgresql": "(details ->> 'target_client_id')",
    "sqlite": "json_extract(details, '$.target_client_id')",
}


def upgrade() -> None:
    expression = _EXPRESSION[op.get_bind().dialect.name]
    op.execute(
        f"CREATE INDEX {_INDEX} ON oauth2_token_logs ({expression}, created_at, id)"
        f" WHERE {expression} IS NOT NULL"
    )


def downgrade() -> None:
    op.execute(f"DROP INDEX {_INDEX}")
