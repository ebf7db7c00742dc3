"""Async engine and session factory for PostgreSQL (asyncpg) and SQLite (aiosqlite)."""

from __future__ import annotations

import asyncio
from threading import Thread
from typing import Any

import aiosqlite
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def async_database_url(url: str) -> str:
    """Normalise `postgresql://` / `postgres://` / `sqlite://` URLs to their async drivers."""
    parsed = make_url(url)
    driver = parsed.drivername
    if driver in {"postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"}:
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif driver == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return parsed.render_as_string(hide_password=False)


# Seconds a failed SQLite open waits for aiosqlite's worker thread to stop: it has no
# connection to close, so microseconds unless the machine is very busy.
STOP_WAIT = 5.0


async def open_aiosqlite(*args: Any, **kwargs: Any) -> aiosqlite.Connection:
    """`aiosqlite.connect(*args, **kwargs)` (the arguments of `sqlite3.connect`), whose
    worker thread has stopped when opening the database fails.

    On a failed open, aiosqlite queues the stop of the connection's worker thread and
    raises without waiting for it; the thread then reports the stop to the event loop. A
    caller that closes its loop right after the error (`asyncio.run` in the CLI) would
    leave the thread posting to a closed loop: an "Event loop is closed" traceback printed
    after the command's one-line error. Raises what `sqlite3.connect` raised
    (sqlite3.OperationalError for a file that cannot be opened or created).
    """
    connection = aiosqlite.connect(*args, **kwargs)
    # The worker thread, as SQLAlchemy's own aiosqlite connect finds it (aiosqlite has no
    # public handle; before 0.22 the connection was the thread); daemon: never blocks exit.
    worker = connection if isinstance(connection, Thread) else connection._thread
    worker.daemon = True
    try:
        return await connection
    except Exception:
        await asyncio.to_thread(worker.join, STOP_WAIT)
        raise


def create_engine(url: str, pool_size: int = 10, timeout: float | None = None) -> AsyncEngine:
    """Create the async engine. SQLite gets WAL, a busy timeout and foreign keys on.

    `timeout` (seconds, PostgreSQL only; the server passes `OAUTH2_DB_TIMEOUT`) bounds
    connecting (asyncpg `timeout`), each statement (asyncpg `command_timeout`) and waiting
    for a pooled connection (`pool_timeout`), so an unreachable or hung database fails a
    call within it instead of holding the request (storage.errors maps the failure to
    DatabaseUnavailable). None: no bound (the CLI's long maintenance statements).
    """
    url = async_database_url(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("postgresql"):
        # `pool_size` is all this engine may open (no overflow): the worker's connection
        # budget is split in one place (storage.fastpath.split_pool_size).
        kwargs.update(pool_size=pool_size, max_overflow=0, pool_pre_ping=False)
        if timeout is not None:
            kwargs.update(
                pool_timeout=timeout,
                connect_args={"timeout": timeout, "command_timeout": timeout},
            )
    engine = create_async_engine(url, **kwargs)
    if timeout is not None:

        @event.listens_for(engine.sync_engine, "handle_error")
        def _timeout_is_disconnect(context: Any) -> None:
            # A statement that timed out leaves its connection mid-protocol: drop it at
            # once instead of resetting it (a second timeout) or closing it gracefully
            # (SQLAlchemy waits 2 s more for that), so the caller hears within `timeout`.
            if isinstance(context.original_exception, TimeoutError):
                context.is_disconnect = True
                driver = getattr(context.connection, "connection", None)
                driver = getattr(driver, "driver_connection", None)
                if driver is not None and hasattr(driver, "terminate"):
                    driver.terminate()

    if url.startswith("sqlite"):

        @event.listens_for(engine.sync_engine, "do_connect")
        def _open_sqlite(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
            # The arguments SQLAlchemy computed from the URL, opened by `open_aiosqlite`.
            return dialect.dbapi.connect(*cargs, async_creator_fn=open_aiosqlite, **cparams)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
