"""Per-client switches of issue #15 and the DPoP key of public clients' refresh tokens.

- `oauth2_clients.require_pushed_authorization_requests` (RFC 9126 §6): the client's
  authorization requests are accepted only through `/oauth2/par`.
- `oauth2_clients.dpop_bound_access_tokens` (RFC 9449 §5.2): every token request of the
  client must carry a DPoP proof.
- `oauth2_refresh_tokens.dpop_jkt` (RFC 9449 §5): the thumbprint of the key a public
  client's refresh token is bound to; a refresh must prove that key. Null: not bound.

Existing clients get false for both switches; existing refresh tokens stay unbound.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels = None
depends_on = None

_FLAGS = ("require_pushed_authorization_requests", "dpop_bound_access_tokens")


def upgrade() -> None:
    with op.batch_alter_table("oauth2_clients") as batch:
        for flag in _FLAGS:
            batch.add_column(
                sa.Column(flag, sa.Boolean(), nullable=False, server_default=sa.false())
            )
    with op.batch_alter_table("oauth2_refresh_tokens") as batch:
        batch.add_column(sa.Column("dpop_jkt", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("oauth2_refresh_tokens") as batch:
        batch.drop_column("dpop_jkt")
    with op.batch_alter_table("oauth2_clients") as batch:
        for flag in _FLAGS:
            batch.drop_column(flag)
