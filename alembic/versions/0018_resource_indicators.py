"""Resource indicators (RFC 8707; issue #15 item 3).

- `oauth2_clients.resources`: the absolute URIs (no fragment, RFC 8707 §2) the client may
  name in a `resource` parameter, a JSON array; existing clients get `[]` (none).
- `oauth2_authorization_codes.resources`: the resources granted at authorization; the token
  request may name a subset of them (RFC 8707 §2.2). Null: none were requested.
- `oauth2_refresh_tokens.resources`: the resources granted to the refresh token's family,
  copied to every rotated token; a refresh may narrow them, never widen (RFC 8707 §2.2).
  Null: none were requested (the default audience).

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels = None
depends_on = None

_GRANT_TABLES = ("oauth2_authorization_codes", "oauth2_refresh_tokens")


def upgrade() -> None:
    with op.batch_alter_table("oauth2_clients") as batch:
        batch.add_column(
            sa.Column("resources", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
    for table in _GRANT_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("resources", sa.JSON(), nullable=True))


def downgrade() -> None:
    for table in reversed(_GRANT_TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("resources")
    with op.batch_alter_table("oauth2_clients") as batch:
        batch.drop_column("resources")
