"""A person behind every admin change (issue #11 item 2): `oauth2_clients.person` and
`oauth2_clients.bootstrap`.

- `person` (up to 200 characters, null): the named person an admin client is registered
  to (`clients create --person`, admin API `person`). Every audit row its tokens write
  names that person (`details.person`) beside the client (`client_id`).
- `bootstrap` (not null, default false): the admin client the first start created on an
  empty database (OAUTH2_BOOTSTRAP_ADMIN). Its rows carry `details.bootstrap: true`; it
  cannot be registered to a person, and OAUTH2_ADMIN_REQUIRE_PERSON refuses its tokens.

An existing database has no flag yet. The bootstrap client is found by its creation row:
`admin_client_created` with `details.bootstrap` true, written by the first start itself
(`client_id` null, not an API call). When retention has removed that row, it is the
first client ever registered if it still has the name the first start gave it
("bootstrap admin") and scope `admin`. A bootstrap client renamed and older than the
retention period is left unflagged; README "Retiring the bootstrap admin client" retires
it by its id all the same.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels = None
depends_on = None

# The bootstrap client's creation row, per dialect: the target client of the first
# start's `admin_client_created` row (the 0008 index on target_client_id serves it).
_CREATED_BY_FIRST_START = {
    "postgresql": (
        "SELECT details ->> 'target_client_id' FROM oauth2_token_logs"
        " WHERE details ->> 'target_client_id' IS NOT NULL"
        " AND action = 'admin_client_created' AND client_id IS NULL"
        " AND details ->> 'bootstrap' = 'true'"
    ),
    "sqlite": (
        "SELECT json_extract(details, '$.target_client_id') FROM oauth2_token_logs"
        " WHERE json_extract(details, '$.target_client_id') IS NOT NULL"
        " AND action = 'admin_client_created' AND client_id IS NULL"
        " AND json_extract(details, '$.bootstrap') = 1"
    ),
}
# Past retention: the first client registered, still named as the first start named it.
_FIRST_CLIENT_AS_CREATED = (
    "id = (SELECT min(id) FROM oauth2_clients)"
    " AND name = 'bootstrap admin' AND scope LIKE '%admin%'"
)


def upgrade() -> None:
    with op.batch_alter_table("oauth2_clients") as batch:
        batch.add_column(sa.Column("person", sa.String(200), nullable=True))
        batch.add_column(
            sa.Column("bootstrap", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    created = _CREATED_BY_FIRST_START[op.get_bind().dialect.name]
    op.execute(f"UPDATE oauth2_clients SET bootstrap = true WHERE client_id IN ({created})")  # noqa: S608
    op.execute(
        "UPDATE oauth2_clients SET bootstrap = true"  # noqa: S608
        f" WHERE {_FIRST_CLIENT_AS_CREATED}"
        " AND NOT EXISTS (SELECT 1 FROM oauth2_clients WHERE bootstrap = true)"
    )


def downgrade() -> None:
    with op.batch_alter_table("oauth2_clients") as batch:
        batch.drop_column("bootstrap")
        batch.drop_column("person")
