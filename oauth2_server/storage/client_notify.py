"""Client changes pushed to every worker: PostgreSQL `NOTIFY` on one channel, and the
listener each worker keeps (DESIGN.md invariant 9, "Scale").

- `note_client_changed(session, client_id)` runs in the transaction that changes the row:
  on PostgreSQL, `pg_notify(CHANNEL, client_id)`, which PostgreSQL delivers only when (and
  if) that transaction commits; on SQLite nothing (one process; the writer drops its own
  cache entry, and other processes find out through the version check).
- `ClientChangeListener` holds one dedicated asyncpg connection per worker (not a pooled
  one: the pool's connections never keep session state) that LISTENs on CHANNEL and calls
  `changed(client_id)` for every notification, and `changed(None)` (forget everything)
  whenever it (re)connects, since notifications sent while it was away are lost.

The push only makes caches drop changed entries promptly; correctness does not depend on
it: every use of a cached client is checked against the row's `version` in the statement
that does the work (`storage.fastpath`), so a late or lost notification costs one extra
read, never a token issued on an old state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

CHANNEL = "oauth2_client_changed"
PING_SECONDS = 30.0  # how often an idle listener checks its connection is still alive
MAX_BACKOFF_SECONDS = 30.0  # longest wait between reconnection attempts


def note_client_changed(session: Session, client_id: str) -> None:
    """Queue a change notification for `client_id` (≤ 64 characters, the column's bound)
    in the session's transaction; PostgreSQL sends it at commit. No-op on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_notify(CHANNEL, client_id)))


class ClientChangeListener:
    """LISTEN on CHANNEL over one asyncpg connection to `dsn` (`postgresql://…`), calling
    `changed(client_id)` per notification and `changed(None)` at every (re)connection.

    `start()` returns once the first LISTEN is in place, or after one failed attempt
    (logged; the listener keeps trying in the background, and the version check keeps
    every answer correct meanwhile). The connection is watched (a `SELECT 1` every
    PING_SECONDS, and asyncpg's termination callback) and re-established with backoff
    (1 s doubling to MAX_BACKOFF_SECONDS; `timeout` seconds per attempt), logged at INFO
    once when lost and once when back (a database outage itself is logged once by
    `storage.errors.Availability`). `close()` stops it.
    """

    def __init__(self, dsn: str, changed: Callable[[str | None], None], timeout: float) -> None:
        self.dsn = dsn
        self.changed = changed
        self.timeout = timeout
        self._connection: Any = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()

    async def start(self) -> None:
        try:
            await self._connect()
        except Exception as exc:  # e.g. a pooler that cannot LISTEN: keep trying
            log.warning(
                "client change notifications unavailable (%s); cached clients are checked "
                "by version until they are",
                type(exc).__name__,
            )
        self._task = asyncio.create_task(self._watch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop_connection()

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        self.changed(payload[:64])

    def _terminated(self, connection: Any) -> None:
        self._lost.set()

    async def _connect(self) -> None:
        import asyncpg

        connection = await asyncpg.connect(self.dsn, timeout=self.timeout)
        try:
            await connection.add_listener(CHANNEL, self._notified)
        except BaseException:
            await connection.close(timeout=self.timeout)
            raise
        connection.add_termination_listener(self._terminated)
        self._connection = connection
        self._lost.clear()
        self.changed(None)  # whatever was cached may have changed while nobody listened

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            connection.remove_termination_listener(self._terminated)
            with contextlib.suppress(Exception):
                await connection.close(timeout=self.timeout)

    async def _alive(self) -> bool:
        """False once the connection ended or missed a ping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._lost.wait(), PING_SECONDS)
            return False
        try:
            await self._connection.fetchval("SELECT 1", timeout=self.timeout)
        except Exception:
            return False
        return True

    async def _watch(self) -> None:
        while True:
            if self._connection is not None:
                while await self._alive():
                    pass
                log.info(
                    "client change notifications lost their database connection; "
                    "reconnecting (cached clients are checked by version meanwhile)"
                )
                self.changed(None)
                await self._drop_connection()
            backoff = 1.0
            while True:
                await asyncio.sleep(backoff)
                try:
                    await self._connect()
                except Exception as exc:  # the database is still away: try again later
                    log.debug("client change listener: reconnect failed: %s", type(exc).__name__)
                    backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                    continue
                log.info("client change notifications restored")
                break
