"""The hot path on PostgreSQL (asyncpg): `storage.protocols`' `IssueStore`,
`IntrospectionReader`, `ExchangeReader` and `JtiClaims` in one round trip each, no ORM.

Issuing a token writes two rows (the access-token row and its audit row) that must commit
together. Through an ORM session that is BEGIN, INSERT, INSERT, COMMIT plus SQLAlchemy's
per-statement machinery (~1.2 ms of CPU here); here it is ONE statement, a data-modifying
CTE (`storage.client_state.guarded_write_sql`): atomic, durable at commit, one round trip,
written only if the client row is still active at the guarded version (DESIGN.md
invariant 9).

Requests that arrive while statements are in flight are coalesced (`storage.coalesce`):
their rows, their reads, or their `jti` claims (DPoP proofs, client assertions), go out
together in the next single statement. A failed
statement fails every request in it, so no token is handed out that is not durably stored.

Values are bound as the table's column types bind them (`_binders`): JSON columns as JSON
text, and `UTCDateTime` through its own `process_bind_param`, so a naive datetime is
refused here exactly as on the SQLAlchemy path.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Executable, Table, TypeDecorator
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from oauth2_server import metrics
from oauth2_server.db.models import AccessToken, TokenLog, UsedJti
from oauth2_server.storage.client_state import ClientGuard, IntrospectionRead, guarded_write_sql
from oauth2_server.storage.coalesce import Coalescer
from oauth2_server.storage.exchange import (
    EXCHANGE_READ_MANY,
    ExchangePrefetch,
    PrefetchKey,
    exchange_params,
    exchange_prefetch,
)
from oauth2_server.storage.fastpath import SELECT_CURRENT, FastStore
from oauth2_server.storage.introspection import (
    INTROSPECTION_READ_MANY,
    IntrospectionKey,
    introspection_params,
    introspection_result,
)
from oauth2_server.storage.protocols import IssueBatch, SessionWriter
from oauth2_server.storage.tokens import access_token_values
from oauth2_server.storage.used_jtis import CLAIM_MANY_SQL, jti_digest

# At most this many coalesced INSERT statements in flight per worker. Two measured best in
# bench/load.py: with four, most statements carried one request (one round trip each);
# with one, p99 latency grew with every slow commit.
MAX_FLUSHERS = 2
# At most this many coalesced reads (introspection's, token exchange's) in flight per worker.
# One measured best in bench/load.py (primary-key reads, no commit to wait for): about
# 3,400 introspections/s against 2,400-2,800 with every lookup sent alone.
MAX_READERS = 1

_DIALECT = asyncpg_dialect()
_ACCESS = AccessToken.__table__
_LOG = TokenLog.__table__
_JTIS = UsedJti.__table__


@functools.cache
def compiled(statement: Executable) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    """A SQLAlchemy statement compiled once for raw asyncpg: SQL, parameter order, the
    statement's own constants."""
    sql = statement.compile(dialect=_DIALECT)
    return str(sql), tuple(sql.positiontup or ()), dict(sql.params)


def _positional(statement: Executable, params: dict[str, Any]) -> list[Any]:
    _, order, constants = compiled(statement)
    values = {**constants, **params}
    return [values[name] for name in order]


@functools.cache
def _binders(table: Table) -> dict[str, Callable[[Any], Any]]:
    """Per column, how asyncpg must receive its value (see module doc)."""
    binders: dict[str, Callable[[Any], Any]] = {}
    for column in table.c:
        kind = column.type
        if isinstance(kind, JSON):
            binders[column.name] = json.dumps
        elif isinstance(kind, TypeDecorator):
            binders[column.name] = functools.partial(kind.process_bind_param, dialect=_DIALECT)
    return binders


def pg_values(table: Table, row: dict[str, Any], columns: Sequence[str]) -> list[Any]:
    """`row`'s values for `columns` as asyncpg takes them. Raises ValueError for a naive
    datetime in a UTC column."""
    binders = _binders(table)
    values = []
    for name in columns:
        value = row[name]
        bind = binders.get(name)
        values.append(bind(value) if bind is not None and value is not None else value)
    return values


async def _no_session_state(connection: Any) -> None:
    """Pool reset: these connections only run single autocommit statements and never set
    session state (no LISTEN, advisory locks or SET), so asyncpg's default reset query —
    one more round trip per request — has nothing to undo."""


async def open_pool(engine: AsyncEngine, pool_size: int, timeout: float | None) -> Any:
    """An asyncpg pool of at most `pool_size` connections to `engine`'s database;
    `timeout` (seconds) bounds connecting and every statement."""
    import asyncpg

    url = make_url(engine.url).set(drivername="postgresql")
    return await asyncpg.create_pool(
        url.render_as_string(hide_password=False),
        # No floor: asyncpg restores a floor in the background during an outage and
        # logs a traceback per attempt; connections open on demand instead.
        min_size=0,
        max_size=pool_size,
        reset=_no_session_state,
        # These connections run only the hot path's fixed statements (primary-key
        # lookups, inserts), whose generic plan is the custom one; without this,
        # PostgreSQL re-plans each prepared statement on its first five executions per
        # connection and may keep doing so (bench/load.py: PostgreSQL CPU per
        # introspection fell from about 0.10 ms to 0.03-0.07 ms).
        server_settings={"plan_cache_mode": "force_generic_plan"},
        timeout=timeout,  # connect
        command_timeout=timeout,  # every statement
    )


@dataclass(eq=False)
class _Issue:
    """One request's collected rows under its guard (hashed by identity)."""

    batch: IssueBatch
    guard: ClientGuard | None
    rows: list[tuple[Table, dict[str, Any]]] = field(default_factory=list)


@dataclass(eq=False)
class _Claim:
    """One request's `jti` claim (hashed by identity: two requests with the same digest
    are two claims, of which one wins)."""

    digest: str
    expires_at: Any  # as asyncpg binds `UsedJti.expires_at` (`pg_values`)


class PgFastStore(FastStore):
    """`FastStore` on PostgreSQL: the same protocols over an asyncpg pool."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """`FastStore`'s arguments, `pool` being an asyncpg pool (`open_pool`)."""
        super().__init__(*args, **kwargs)
        self._sql: dict[tuple[Any, ...], str] = {}
        self._issues: Coalescer[_Issue, bool] = Coalescer(self._write_many, MAX_FLUSHERS)
        self._introspections: Coalescer[IntrospectionKey, IntrospectionRead] = Coalescer(
            self._introspect_many, MAX_READERS
        )
        self._exchanges: Coalescer[PrefetchKey, ExchangePrefetch] = Coalescer(
            self._prefetch_many, MAX_READERS
        )
        self._claims: Coalescer[_Claim, bool] = Coalescer(self._claim_many, MAX_FLUSHERS)

    def _acquire(self) -> metrics.CountWaiting:
        """A pooled connection (`async with`) within `timeout`; the wait is counted in
        `oauth2_db_pool_waiting{pool="asyncpg"}`."""
        return metrics.CountWaiting(self.pool.acquire(timeout=self.timeout), "asyncpg")

    async def close(self) -> None:
        await self.pool.close()

    async def issue(self, batch: IssueBatch, guard: ClientGuard | None = None) -> bool:
        """`IssueStore.issue` in one coalesced statement; each request's rows under its
        own guard. Returns once the statement holding them has committed."""
        if not batch:
            return True
        rows = [(_ACCESS, access_token_values(access)) for access in batch.access_tokens]
        rows += [(_LOG, event.row()) for event in batch.events]
        with self.availability.guard():
            written = await self._issues.get(_Issue(batch, guard, rows))
        return bool(written)

    def _write_sql(self, requests: int, shape: Sequence[tuple[Table, tuple[str, ...], int]]) -> str:
        """`client_state.guarded_write_sql`, cached per shape."""
        key = (requests, tuple((table.name, columns, count) for table, columns, count in shape))
        sql = self._sql.get(key)
        if sql is None:
            sql = guarded_write_sql(requests, shape)
            if len(self._sql) < 4096:
                self._sql[key] = sql
        return sql

    async def _write_many(self, issues: list[_Issue]) -> dict[_Issue, bool]:
        args: list[Any] = []
        groups: dict[tuple[Table, tuple[str, ...]], list[tuple[int, dict[str, Any]]]] = {}
        for n, issue in enumerate(issues):
            guard = issue.guard
            args += [n, guard.client_id, guard.version] if guard else [n, None, None]
            for table, row in issue.rows:
                groups.setdefault((table, tuple(row)), []).append((n, row))
        shape = [(table, columns, len(rows)) for (table, columns), rows in groups.items()]
        for (table, columns), rows in groups.items():
            for n, row in rows:
                args.append(n)
                args += pg_values(table, row, columns)
        async with self._acquire() as connection:
            passed = {
                r[0] for r in await connection.fetch(self._write_sql(len(issues), shape), *args)
            }
        return {issue: n in passed for n, issue in enumerate(issues)}

    async def claim_jti(self, key: str, expires_at: datetime) -> bool:
        """`JtiClaims.claim_jti` in one coalesced statement (`used_jtis.CLAIM_MANY_SQL`,
        autocommitted: durable before this returns). Raises ValueError for a naive
        `expires_at`."""
        row = {"jti_hash": jti_digest(key), "expires_at": expires_at}
        digest, expires = pg_values(_JTIS, row, ("jti_hash", "expires_at"))
        with self.availability.guard():
            claimed = await self._claims.get(_Claim(digest, expires))
        return bool(claimed)

    async def _claim_many(self, claims: list[_Claim]) -> dict[_Claim, bool]:
        """Claim each distinct digest once; a later claim of a digest already in the batch
        answers False (the earlier one may win; both never do)."""
        first: dict[str, _Claim] = {}
        for claim in claims:
            first.setdefault(claim.digest, claim)
        async with self._acquire() as connection:
            recorded = await connection.fetch(
                CLAIM_MANY_SQL, list(first), [claim.expires_at for claim in first.values()]
            )
        won = {first[row[0]] for row in recorded}
        return {claim: claim in won for claim in claims}

    def session_writer(self, session: Session) -> SessionWriter:
        """`IssueStore.session_writer`: access-token rows are collected for `issue`, the
        row's one write path on PostgreSQL; every other row goes in the session."""
        return SessionWriter(session, IssueBatch())

    async def client_current(self, guard: ClientGuard) -> bool:
        sql, _, _ = compiled(SELECT_CURRENT)
        params = {"client_id": guard.client_id, "version": guard.version}
        with self.availability.guard():
            async with self._acquire() as connection:
                found = await connection.fetchrow(sql, *_positional(SELECT_CURRENT, params))
        return found is not None

    async def copy_rows(self, table: Table, rows: list[dict[str, Any]]) -> None:
        """PostgreSQL's COPY protocol (no statement to prepare, little client CPU)."""
        if not rows:
            return
        columns = list(rows[0])
        records = [tuple(pg_values(table, row, columns)) for row in rows]
        with self.availability.guard():
            async with self._acquire() as connection:
                await connection.copy_records_to_table(table.name, records=records, columns=columns)

    async def introspection(self, jti: str, caller_id: str | None) -> IntrospectionRead:
        with self.availability.guard():
            found = await self._introspections.get((jti, caller_id))
        assert found is not None  # one row per key: the statement outer-joins everything
        return found

    async def _introspect_many(
        self, keys: list[IntrospectionKey]
    ) -> dict[IntrospectionKey, IntrospectionRead]:
        rows = await self._fetch(INTROSPECTION_READ_MANY, introspection_params(keys))
        return {(row[0], row[1]): introspection_result(list(row)) for row in rows}

    async def prefetch_exchange(
        self, jti: str, client_id: str, branch_id: str, provider: str
    ) -> ExchangePrefetch:
        with self.availability.guard():
            found = await self._exchanges.get((jti, client_id, branch_id, provider))
        assert found is not None  # one row per key: the statement outer-joins everything
        return found

    async def _prefetch_many(self, keys: list[PrefetchKey]) -> dict[PrefetchKey, ExchangePrefetch]:
        rows = await self._fetch(EXCHANGE_READ_MANY, exchange_params(keys))
        return {(row[0], row[1], row[2], row[3]): exchange_prefetch(list(row)) for row in rows}

    async def _fetch(self, statement: Executable, params: dict[str, Any]) -> list[Any]:
        sql, _, _ = compiled(statement)
        async with self._acquire() as connection:
            return await connection.fetch(sql, *_positional(statement, params))
