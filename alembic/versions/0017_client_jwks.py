"""The public keys of `private_key_jwt` clients (issue #15 item 1; RFC 7523 §2.2, RFC 7591 §2).

- `oauth2_clients.jwks`: the client's JWK Set (RFC 7517 §5), public keys only, stored as
  registered (JSON). Null: none registered.
- `oauth2_clients.jwks_uri`: where the server fetches the client's JWK Set (https; http
  only on a loopback address in development). Null: none registered.

A `private_key_jwt` client has exactly one of them and no secret; other clients have
neither. Existing clients get null for both.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("oauth2_clients") as batch:
        batch.add_column(sa.Column("jwks", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("jwks_uri", sa.String(length=2000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("oauth2_clients") as batch:
        batch.drop_column("jwks_uri")
        batch.drop_column("jwks")
