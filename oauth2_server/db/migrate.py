"""Apply and check the Alembic history (one history for PostgreSQL and SQLite).

The scripts live in the top-level `alembic/` directory of the source tree (beside
`alembic.ini`, for the `alembic` command); the wheel ships the same files as package data
in `oauth2_server/_alembic` (pyproject.toml `[tool.setuptools.package-dir]`), so an
installed server migrates without a source checkout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine


class DatabaseNotMigrated(RuntimeError):
    """The database is behind (or ahead of) the code's Alembic head."""


def script_location() -> str:
    """The directory holding `env.py` and `versions/`: `oauth2_server/_alembic` in an
    installed wheel, else the top-level `alembic/` of the source checkout this package
    runs from (editable install, tests)."""
    packaged = resources.files("oauth2_server").joinpath("_alembic")
    if packaged.is_dir():
        return str(packaged)
    return str(Path(__file__).resolve().parents[2] / "alembic")


def alembic_config() -> Config:
    """Alembic configuration pointing at this code's scripts (`script_location()`)."""
    config = Config()
    config.set_main_option("script_location", script_location())
    return config


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def upgrade(engine: AsyncEngine) -> None:
    """Migrate the database to head (idempotent)."""

    def _upgrade(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision recorded in the database, or None for an empty database."""

    def _current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(_current)


async def require_head(engine: AsyncEngine) -> None:
    """Raise DatabaseNotMigrated unless the database is at the code's head revision."""
    current, head = await current_revision(engine), head_revision()
    if current != head:
        state = "empty (never migrated)" if current is None else f"at revision {current}"
        raise DatabaseNotMigrated(
            f"database is {state} but this server needs revision {head}: "
            "run `oauth2-server migrate` first"
        )
