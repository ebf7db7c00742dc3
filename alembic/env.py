"""Alembic environment: runs on a connection handed in by `oauth2_server.db.migrate`,
or, from the `alembic` command line, on `OAUTH2_DATABASE_URL` through the async driver."""

from __future__ import annotations

import asyncio
import re

from alembic import context
from sqlalchemy.engine import Connection

from oauth2_server.db.engine import async_database_url, create_engine
from oauth2_server.db.models import Base

config = context.config
target_metadata = Base.metadata


# Monthly partitions of oauth2_token_logs (and its default partition) are created by the
# janitor, not by the models: autogenerate must not propose dropping them.
_PARTITION = re.compile(r"^oauth2_token_logs_(p\d{6}|default)$")


def _include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    return not (type_ == "table" and name is not None and _PARTITION.match(name))


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=_include_object,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_from_url(url: str) -> None:
    engine = create_engine(url)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    # the bare `alembic` command: the database the server would use (OAUTH2_DATABASE_URL,
    # else the embedded default in OAUTH2_DATA_DIR)
    from oauth2_server.config import Settings

    url = config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url
    asyncio.run(_run_from_url(async_database_url(url)))
