"""The database being unreachable, as one domain exception (DESIGN.md invariant 11).

Drivers and pools fail in many shapes during an outage: `OSError` (connection refused,
reset), `TimeoutError` (asyncpg's connect and command timeouts, its pool's acquire),
asyncpg's connection errors (SQLSTATE class 08, 57P01-57P03 shutdown/starting up, 53300 too
many connections), SQLAlchemy's `DBAPIError` with `connection_invalidated` and its pool's
`TimeoutError`. `is_unavailable(exc)` recognises them all; the storage entry points (the
Bridge, FastStore) raise `DatabaseUnavailable` in their place, and the HTTP layer maps it to
`503 temporarily_unavailable` with `Retry-After` in one place (app.py). Errors that mean
"this statement is wrong" (constraint violations, bad data) are not outages and keep their
own type.

`Availability` is a process's view of the outage: it logs one WARNING when the first
failure is seen and one when the next database call succeeds, so a flood of requests
during an outage writes two lines, not a traceback each.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
from sqlalchemy import exc as sa_exc

log = logging.getLogger("oauth2_server.database")

# asyncpg errors that say the server cannot be talked to now, not that a statement is wrong.
_ASYNCPG_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.CannotConnectNowError,  # 57P03: starting up, shutting down, in recovery
    asyncpg.AdminShutdownError,  # 57P01
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.TooManyConnectionsError,  # 53300
)
# Texts of asyncpg's InterfaceError when its connection went away under it.
_CLOSED = ("connection is closed", "connection was closed", "underlying connection is closed")
# SQLite's "try again later" answers (another process holds the lock past busy_timeout).
_SQLITE_BUSY = ("database is locked", "database is busy", "unable to open database file")


class DatabaseUnavailable(Exception):
    """The database cannot be reached or did not answer within `OAUTH2_DB_TIMEOUT`.

    `reason` is a short, bounded description of the underlying failure (exception class and
    the first line of its message), safe to log: drivers do not put parameters in these.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what it wraps: SQLAlchemy's `.orig`, and the driver exception its async
    adapter raised `from` (at most a few levels; no `__context__`, which may be unrelated)."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(found) < 5:
        found.append(current)
        if isinstance(current, sa_exc.DBAPIError):
            current = current.orig
        elif type(current).__module__.startswith("sqlalchemy"):
            current = current.__cause__
        else:
            current = None
    return found


def is_unavailable(exc: BaseException) -> bool:
    """True if `exc` means the database is unreachable, too slow or refusing connections."""
    for item in _chain(exc):
        if isinstance(item, DatabaseUnavailable | sa_exc.TimeoutError | OSError):
            return True  # OSError covers TimeoutError and ConnectionError
        if isinstance(item, sa_exc.DBAPIError) and item.connection_invalidated:
            return True
        if isinstance(item, _ASYNCPG_UNAVAILABLE):
            return True
        if isinstance(item, asyncpg.InterfaceError) and any(t in str(item) for t in _CLOSED):
            return True
        if isinstance(item, sqlite3.OperationalError) and any(t in str(item) for t in _SQLITE_BUSY):
            return True
    return False


def describe(exc: BaseException) -> str:
    """`Class: first line of the message`, at most 200 characters, of the innermost
    exception of `exc`'s chain (the driver's own error)."""
    inner = _chain(exc)[-1]
    message = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    text = f"{type(inner).__name__}: {message}" if message else type(inner).__name__
    return text[:200]


class Availability:
    """One process's view of database availability: logs the start and the end of an outage
    once each (WARNING), whatever the number of failing requests in between.

    Storage entry points wrap each database call in `guard()`:

        with availability.guard():
            await connection.fetchrow(...)

    which raises `DatabaseUnavailable` in place of an outage error (`translate`) and notes
    the end of an outage after a call succeeded (`available`). Both are O(1).
    """

    def __init__(self) -> None:
        self.down_since: float | None = None  # time.monotonic() of the first failure

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Wrap one database call: an error that means the database is unreachable or timed
        out leaves as `DatabaseUnavailable` (chained to the driver's error); any other error
        leaves unchanged; a call that succeeded ends a noted outage."""
        try:
            yield
        except Exception as exc:
            if (outage := self.translate(exc)) is None:
                raise
            raise outage from exc
        self.available()

    def translate(self, exc: BaseException) -> DatabaseUnavailable | None:
        """The `DatabaseUnavailable` to raise in place of `exc`, or None to re-raise `exc`
        as it is (not an outage, or already a DatabaseUnavailable). Notes the outage."""
        if not is_unavailable(exc):
            return None
        self.note(exc)
        return None if isinstance(exc, DatabaseUnavailable) else DatabaseUnavailable(describe(exc))

    def note(self, exc: BaseException) -> None:
        """An outage is going on: log its start (WARNING) if this is its first failure."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            reason = exc.reason if isinstance(exc, DatabaseUnavailable) else describe(exc)
            log.warning(
                "database unavailable (%s); answering 503 temporarily_unavailable until it "
                "answers again",
                reason,
            )

    def available(self) -> None:
        """A database call succeeded: log the end of an outage if one was going on."""
        if self.down_since is not None:
            seconds = time.monotonic() - self.down_since
            self.down_since = None
            log.warning("database available again after %.1f s of outage", seconds)
