"""Helpers for the hash-chain tests (issue #11 item 5): sealing the shared test database
behind a short horizon, and fresh databases of the same backend for tests that tamper
with a whole chain (prefix deletes, truncation, partition drops) or need a chain's
first seal."""

from __future__ import annotations

import asyncio
import atexit
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from oauth2_server.audit import sealing
from oauth2_server.db.engine import create_engine as create_async_engine
from oauth2_server.db.engine import create_sessionmaker
from tests.conftest import Database, free_port, server_env, sync_url

# Seconds the tests' sealer keeps clear of rows that may still commit: more than
# `audit.log.RESTAMP_AFTER` plus a flush of the live servers' audit buffers (0.2 s).
SEAL_MARGIN = 2.0


def seal_now(db: Database, margin: float = SEAL_MARGIN) -> int:
    """Seal every row written before this call (waits `margin` seconds first, so the
    horizon passes them), without signing. Returns rows sealed."""
    time.sleep(margin + 0.1)

    async def go() -> int:
        engine = create_async_engine(db.url, 2)
        try:
            run = await sealing.seal_pending(create_sessionmaker(engine), 0, margin=margin)
            return run.sealed
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _admin_engine(url: str) -> Any:
    return create_engine(sync_url(url), isolation_level="AUTOCOMMIT")


# Per process and backend: a database migrated once, cloned by `fresh_database` (a
# PostgreSQL template database or a SQLite file), instead of migrating every fresh one.
_TEMPLATES: dict[str, str] = {}


def _migrate(url: str, keys: str) -> None:
    env = server_env(url, keys, free_port())
    subprocess.run(
        [sys.executable, "-m", "oauth2_server", "migrate"], env=env, check=True, capture_output=True
    )


def _drop_templates() -> None:
    for url, template in _TEMPLATES.items():
        if url.startswith("sqlite"):
            shutil.rmtree(Path(template).parent, ignore_errors=True)
        else:
            admin = _admin_engine(url)
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)'))
            admin.dispose()


atexit.register(_drop_templates)


def _template(database: Database) -> str:
    """The migrated template of `database`'s backend (made on first use in this process):
    a SQLite file path, or a PostgreSQL database name."""
    if database.url in _TEMPLATES:
        return _TEMPLATES[database.url]
    if database.backend == "sqlite":
        template = str(Path(tempfile.mkdtemp(prefix="oauth2-fresh-template-")) / "template.db")
        _migrate(f"sqlite+aiosqlite:///{template}", database.keys)
    else:
        template = f"{make_url(database.url).database}_fresh_template"
        admin = _admin_engine(database.url)
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{template}"'))
        admin.dispose()
        url = make_url(database.url).set(database=template)
        _migrate(url.render_as_string(hide_password=False), database.keys)
    _TEMPLATES[database.url] = template
    return template


@contextmanager
def fresh_database(database: Database, directory: Path) -> Iterator[Database]:
    """A new, migrated database of `database`'s backend (same keyring), dropped after: a
    copy of a template migrated once per process (what `oauth2-server migrate` makes of
    an empty database, without running the migrations again for each one)."""
    template = _template(database)
    if database.backend == "sqlite":
        path = directory / f"fresh-{uuid.uuid4().hex[:8]}.db"
        with closing(sqlite3.connect(template)) as source, closing(sqlite3.connect(path)) as target:
            source.backup(target)
        url = f"sqlite+aiosqlite:///{path}"
    else:
        name = f"{make_url(database.url).database}_fresh_{uuid.uuid4().hex[:8]}"
        admin = _admin_engine(database.url)
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        admin.dispose()
        url = make_url(database.url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(sync_url(url))
    try:
        yield Database(database.backend, url, engine, database.keys)
    finally:
        engine.dispose()
        if database.backend == "postgresql":
            admin = _admin_engine(database.url)
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            admin.dispose()
