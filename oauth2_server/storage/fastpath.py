"""The hot path's storage (DESIGN.md "Performance facts"): the `IssueStore`,
`IntrospectionReader`, `ExchangeReader` and `JtiClaims` of `storage.protocols`.

`FastStore` is the SQLAlchemy implementation (SQLite, or any engine): each call is one
short transaction on the engine, and a collected issue is written through the very
functions the request's session uses (`SessionWriter`), so each row has one write path
on this backend. `FastStore.create` returns the PostgreSQL implementation
(`storage.fastpath_pg.PgFastStore`, asyncpg, one coalesced statement per round trip) on
PostgreSQL.

Every public method raises `storage.errors.DatabaseUnavailable` in place of a driver or
pool error that means the database is unreachable or did not answer within
`OAUTH2_DB_TIMEOUT`.

Connection budget (one per worker): `OAUTH2_DB_POOL_SIZE` connections in all, split
by `split_pool_size` between SQLAlchemy's pool (sessions, no overflow) and, on
PostgreSQL, the asyncpg pool of the hot path; plus one LISTEN connection for client
changes (`storage.client_notify`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from oauth2_server.db.models import Client
from oauth2_server.storage.client_state import ClientGuard, IntrospectionRead
from oauth2_server.storage.errors import Availability
from oauth2_server.storage.exchange import EXCHANGE_READ, ExchangePrefetch, exchange_prefetch
from oauth2_server.storage.introspection import INTROSPECTION_READ, introspection_result
from oauth2_server.storage.protocols import IssueBatch, SessionWriter
from oauth2_server.storage.used_jtis import claim_jti

# The client row still active at the guarded version (DESIGN.md invariant 9).
SELECT_CURRENT = select(Client.id).where(
    Client.client_id == bindparam("client_id"),
    Client.active.is_(True),
    Client.version == bindparam("version"),
)


def split_pool_size(pool_size: int) -> tuple[int, int]:
    """`OAUTH2_DB_POOL_SIZE` split into (SQLAlchemy pool, asyncpg pool): half, at least
    one each, for the hot path's coalesced statements; the rest for sessions."""
    hot = max(1, pool_size // 2)
    return max(1, pool_size - hot), hot


class FastStore:
    """The hot path on SQLAlchemy (`storage.protocols` implementations; see module doc)."""

    def __init__(
        self,
        engine: AsyncEngine,
        pool: Any = None,
        timeout: float | None = None,
        availability: Availability | None = None,
    ) -> None:
        """`pool`: the PostgreSQL implementation's asyncpg pool; None on this one (its
        connections are the engine's)."""
        self.engine = engine
        self.pool = pool
        self.timeout = timeout  # seconds to wait for a pooled connection; None: forever
        self.availability = availability or Availability()

    @classmethod
    async def create(
        cls,
        engine: AsyncEngine,
        pool_size: int,
        timeout: float | None = None,
        availability: Availability | None = None,
    ) -> FastStore:
        """The hot path for `engine`: `PgFastStore` with an asyncpg pool of `pool_size`
        connections on PostgreSQL, else this class. `timeout` (seconds) bounds connecting,
        waiting for a pooled connection and each statement."""
        if engine.dialect.name != "postgresql":
            return cls(engine, None, timeout, availability)
        from oauth2_server.storage.fastpath_pg import PgFastStore, open_pool

        return PgFastStore(
            engine, await open_pool(engine, pool_size, timeout), timeout, availability
        )

    async def close(self) -> None:
        """Release the hot path's own connections (none here: the engine's are shared)."""

    async def issue(self, batch: IssueBatch, guard: ClientGuard | None = None) -> bool:
        """`IssueStore.issue`: the rows are written first (taking SQLite's single write
        lock), then the guard is read in the same transaction, which rolls back if the
        client is no longer active at the guarded version."""
        if not batch:
            return True
        with self.availability.guard():
            async with AsyncSession(self.engine) as session:
                written = await session.run_sync(lambda sync: _issue(sync, batch, guard))
                await (session.commit() if written else session.rollback())
        return written

    async def claim_jti(self, key: str, expires_at: datetime) -> bool:
        """`JtiClaims.claim_jti`: `storage.used_jtis.claim_jti` in its own transaction,
        committed before this returns."""
        with self.availability.guard():
            async with AsyncSession(self.engine) as session, session.begin():
                return await session.run_sync(lambda sync: claim_jti(sync, key, expires_at))

    async def client_current(self, guard: ClientGuard) -> bool:
        """`IssueStore.client_current`: one primary-key read."""
        with self.availability.guard():
            async with self.engine.connect() as connection:
                found = await connection.execute(
                    SELECT_CURRENT, {"client_id": guard.client_id, "version": guard.version}
                )
                return found.first() is not None

    def session_writer(self, session: Session) -> SessionWriter:
        """`IssueStore.session_writer`: every row in the session (this store writes a
        batch through the same `SessionWriter`)."""
        return SessionWriter(session)

    async def copy_rows(self, table: Table, rows: list[dict[str, Any]]) -> None:
        """Insert many rows of one shape in one transaction (the audit buffer's writer)."""
        if not rows:
            return
        with self.availability.guard():
            async with self.engine.begin() as connection:
                await connection.execute(table.insert(), rows)

    async def introspection(self, jti: str, caller_id: str | None) -> IntrospectionRead:
        """`IntrospectionReader.introspection`: `storage.introspection`'s read, one key."""
        with self.availability.guard():
            async with self.engine.connect() as connection:
                row = await connection.execute(
                    INTROSPECTION_READ, {"jti": jti, "caller": caller_id}
                )
                found = row.first()
        assert found is not None  # FROM one key: always one row
        return introspection_result(list(found))

    async def prefetch_exchange(
        self, jti: str, client_id: str, branch_id: str, provider: str
    ) -> ExchangePrefetch:
        """`ExchangeReader.prefetch_exchange`: `storage.exchange`'s read, one key."""
        params = {"jti": jti, "client_id": client_id, "branch_id": branch_id, "provider": provider}
        with self.availability.guard():
            async with self.engine.connect() as connection:
                found = (await connection.execute(EXCHANGE_READ, params)).first()
        assert found is not None  # FROM one key: always one row
        return exchange_prefetch(list(found))


def _issue(session: Session, batch: IssueBatch, guard: ClientGuard | None) -> bool:
    """Write `batch` through the session's writers; True if `guard` (read after the
    writes, in the same transaction) holds."""
    batch.write_to(SessionWriter(session))
    if guard is None:
        return True
    params = {"client_id": guard.client_id, "version": guard.version}
    return session.execute(SELECT_CURRENT, params).first() is not None
