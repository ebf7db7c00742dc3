"""Client changes take effect everywhere at once: `oauth2_clients.version`.

Every change of a client row (deactivation, deletion, a new secret, narrower scopes,
grant types or redirect URIs) adds one to `version` in the same statement, and
`pg_notify('oauth2_client_changed', client_id)` in the same transaction
(`storage.client_registry`). Workers cache client rows with their version and write a
token only if the row still has that version (`storage.fastpath`), so a copy cached
before a change can never be acted on after it. Existing rows start at 1.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("oauth2_clients") as batch:
        batch.add_column(
            sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("1"))
        )


def downgrade() -> None:
    with op.batch_alter_table("oauth2_clients") as batch:
        batch.drop_column("version")
