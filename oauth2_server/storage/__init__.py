"""Storage behind narrow functions, one module per concern.

Every function takes a synchronous `sqlalchemy.orm.Session`: inside a request it is the
session that `oauth.bridge` runs through `AsyncSession.run_sync`, so the I/O is still
awaited on asyncpg/aiosqlite underneath; async callers (CLI, start-up) use the same
functions through `run_sync`. Security-relevant changes are single compare-and-set
statements that cannot race.
"""

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, timezone-aware UTC, with microseconds."""
    return datetime.now(UTC)
