"""The hot path's storage: few round trips, no ORM (DESIGN.md "Performance facts").

Issuing a token writes two rows (the access-token row and its audit row) that must commit
together; introspection reads one row by `jti`. Through an ORM session that is BEGIN,
INSERT, INSERT, COMMIT plus SQLAlchemy's per-statement machinery (~1.2 ms of CPU here);
this module does it as ONE statement on PostgreSQL, a data-modifying CTE sent over
asyncpg (`WITH w0 AS (INSERT …) INSERT …`): atomic, durable at commit, one round trip.
On SQLite it runs the same inserts in one transaction through SQLAlchemy.

`DeferredWrites` stands in for a `Session` while a request's Authlib call runs without a
database session (its reads were done up front): the storage functions' inserts on
`session.connection().execute(table.insert(), params)` are collected, then `FastStore.apply`
writes them in one transaction.

Every public method raises `storage.errors.DatabaseUnavailable` in place of a driver or pool
error that means the database is unreachable or did not answer within `OAUTH2_DB_TIMEOUT`
(the asyncpg pool's connect, acquire and command timeout).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy import JSON, Insert, Table, bindparam, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from oauth2_server.db.models import AccessToken
from oauth2_server.storage.errors import Availability
from oauth2_server.storage.exchange import (
    ExchangePrefetch,
    PrefetchKey,
    prefetch_exchange,
    prefetch_exchanges,
)
from oauth2_server.storage.tokens import AccessTokenRecord

K = TypeVar("K")
V = TypeVar("V")


class DeferredWrites:
    """Collects `(table, row)` inserts issued through `connection().execute(...)`.

    Only plain `Table.insert()` statements are accepted; anything else raises TypeError,
    so a hook that needs a real session cannot silently run on the fast path.
    """

    def __init__(self) -> None:
        self.rows: list[tuple[Table, dict[str, Any]]] = []

    def connection(self) -> DeferredWrites:
        return self

    def execute(self, statement: Any, parameters: Any = None) -> None:
        if not isinstance(statement, Insert) or not isinstance(statement.table, Table):
            raise TypeError(f"not deferrable on the fast path: {statement!r}")
        if statement._values or statement._multi_values:  # noqa: SLF001 - literal values
            raise TypeError("deferred inserts take their values as parameters")
        rows = parameters if isinstance(parameters, list) else [parameters]
        self.rows.extend((statement.table, dict(row)) for row in rows)


_JSON_COLUMNS: dict[str, frozenset[str]] = {}


def _json_columns(table: Table) -> frozenset[str]:
    """Columns asyncpg must receive as JSON text."""
    names = _JSON_COLUMNS.get(table.name)
    if names is None:
        names = frozenset(c.name for c in table.c if isinstance(c.type, JSON))
        _JSON_COLUMNS[table.name] = names
    return names


def _pg_values(table: Table, row: dict[str, Any], columns: Sequence[str]) -> list[Any]:
    """`row`'s values for `columns` as asyncpg takes them (JSON columns as JSON text)."""
    json_columns = _json_columns(table)
    return [
        json.dumps(row[name]) if name in json_columns and row[name] is not None else row[name]
        for name in columns
    ]


def _pg_args(rows: Sequence[tuple[Table, dict[str, Any]]]) -> list[Any]:
    return [value for table, row in rows for value in _pg_values(table, row, list(row))]


# At most this many coalesced INSERT statements in flight per worker, and requests per
# statement (well under PostgreSQL's 32767 bind parameters). Two in flight measured best
# in bench/load.py: with four, most statements carried one request (one round trip each);
# with one, p99 latency grew with every slow commit.
MAX_FLUSHERS = 2
# At most this many coalesced reads (introspection's, token exchange's) in flight per worker.
# One measured best in bench/load.py (primary-key reads, no commit to wait for): about
# 3,400 introspections/s against 2,400-2,800 with every lookup sent alone.
MAX_READERS = 1
MAX_BATCH = 64


async def _no_session_state(connection: Any) -> None:
    """Pool reset: these connections only run single autocommit statements and never set
    session state (no LISTEN, advisory locks or SET), so asyncpg's default reset query —
    one more round trip per request — has nothing to undo."""


class FastStore:
    """One-round-trip writes and reads for the hot path (PostgreSQL via asyncpg)."""

    def __init__(
        self,
        engine: AsyncEngine,
        pool: Any | None,
        timeout: float | None = None,
        availability: Availability | None = None,
    ) -> None:
        self.engine = engine
        self.pool = pool  # asyncpg.Pool on PostgreSQL, None on SQLite
        self.timeout = timeout  # seconds to wait for a pooled connection; None: forever
        self.availability = availability or Availability()
        self._sql: dict[tuple[Any, ...], str] = {}
        self._pending: list[tuple[list[tuple[Table, dict[str, Any]]], asyncio.Future[None]]] = []
        self._flushers = 0
        self._access_tokens = Coalescer(self._read_access_tokens, MAX_READERS)
        self._exchanges: Coalescer[PrefetchKey, ExchangePrefetch] = Coalescer(
            lambda keys: prefetch_exchanges(self.pool, keys), MAX_READERS
        )

    @classmethod
    async def create(
        cls,
        engine: AsyncEngine,
        pool_size: int,
        timeout: float | None = None,
        availability: Availability | None = None,
    ) -> FastStore:
        """Open an asyncpg pool beside the engine on PostgreSQL (none on SQLite).

        `timeout` (seconds) bounds connecting, waiting for a pooled connection and each
        statement; past it the call raises DatabaseUnavailable.
        """
        if engine.dialect.name != "postgresql":
            return cls(engine, None, timeout, availability)
        import asyncpg

        url = make_url(engine.url).set(drivername="postgresql")
        pool = await asyncpg.create_pool(
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
        return cls(engine, pool, timeout, availability)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    def _insert_sql(self, groups: Sequence[tuple[Table, tuple[str, ...], int]]) -> str:
        """`WITH w0 AS (INSERT … VALUES (…),(…)) INSERT …` for (table, columns, row count)
        groups; cached per shape."""
        key = tuple((table.name, columns, count) for table, columns, count in groups)
        sql = self._sql.get(key)
        if sql is None:
            parts: list[str] = []
            number = 0
            for table, columns, count in groups:
                tuples = []
                for _ in range(count):
                    placeholders = [f"${number + i + 1}" for i in range(len(columns))]
                    number += len(columns)
                    tuples.append(f"({', '.join(placeholders)})")
                # Identifiers come from table metadata (a KeyError for anything else);
                # values are always bound parameters.
                names = ", ".join(f'"{table.c[name].name}"' for name in columns)
                parts.append(
                    f'INSERT INTO "{table.name}" ({names}) VALUES {", ".join(tuples)}'  # noqa: S608
                )
            ctes = ", ".join(f"w{i} AS ({part})" for i, part in enumerate(parts[:-1]))
            sql = f"WITH {ctes} {parts[-1]}" if ctes else parts[-1]
            if len(self._sql) < 4096:
                self._sql[key] = sql
        return sql

    async def apply(self, writes: DeferredWrites) -> None:
        """Write every collected row in one transaction; return once it is committed.

        On PostgreSQL, requests that arrive while `MAX_FLUSHERS` statements are already in
        flight are coalesced: their rows go out together in the next single statement (no
        waiting when the store is idle). Each request still returns only after the
        statement holding its rows has committed, and a failed statement fails every
        request in it, so no token is handed out that is not durably stored.
        """
        if not writes.rows:
            return
        try:
            await self._apply(writes)
        except Exception as exc:
            if (outage := self.availability.translate(exc)) is None:
                raise
            raise outage from exc
        self.availability.available()

    async def _apply(self, writes: DeferredWrites) -> None:
        if self.pool is None:
            async with self.engine.begin() as connection:
                for table, row in writes.rows:
                    await connection.execute(table.insert(), row)
            return
        done = asyncio.get_running_loop().create_future()
        self._pending.append((writes.rows, done))
        if self._flushers < MAX_FLUSHERS:
            self._flushers += 1
            try:
                await self._flush()
            finally:
                self._flushers -= 1
        await done

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            groups: dict[tuple[str, tuple[str, ...]], list[dict[str, Any]]] = {}
            tables: dict[str, Table] = {}
            for rows, _ in batch:
                for table, row in rows:
                    tables[table.name] = table
                    groups.setdefault((table.name, tuple(row)), []).append(row)
            shape = [(tables[name], columns, len(rows)) for (name, columns), rows in groups.items()]
            args = _pg_args(
                [(tables[name], row) for (name, _), rows in groups.items() for row in rows]
            )
            try:
                async with self.pool.acquire(timeout=self.timeout) as connection:
                    await connection.execute(self._insert_sql(shape), *args)
            except Exception as exc:  # every request of the batch fails with it
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def copy_rows(self, table: Table, rows: list[dict[str, Any]]) -> None:
        """Insert many rows of one shape in one transaction, outside the coalesced token
        writes: PostgreSQL's COPY protocol on asyncpg (no statement to prepare, little
        client CPU), a multi-row insert through SQLAlchemy elsewhere."""
        if not rows:
            return
        try:
            await self._copy_rows(table, rows)
        except Exception as exc:
            if (outage := self.availability.translate(exc)) is None:
                raise
            raise outage from exc
        self.availability.available()

    async def _copy_rows(self, table: Table, rows: list[dict[str, Any]]) -> None:
        if self.pool is None:
            async with self.engine.begin() as connection:
                await connection.execute(table.insert(), rows)
            return
        columns = list(rows[0])
        records = [tuple(_pg_values(table, row, columns)) for row in rows]
        async with self.pool.acquire(timeout=self.timeout) as connection:
            await connection.copy_records_to_table(table.name, records=records, columns=columns)

    async def access_token(self, jti: str) -> AccessTokenRecord | None:
        """The access-token row by `jti`, or None (introspection's read).

        On PostgreSQL, lookups that arrive while `MAX_READERS` are in flight are coalesced
        (`Coalescer`): the next statement reads all of them with `WHERE jti = ANY($1)`.
        """
        try:
            if self.pool is None:
                async with self.engine.connect() as connection:
                    row = (await connection.execute(_SELECT_ACCESS, {"jti": jti})).first()
                found = AccessTokenRecord(*row) if row is not None else None
            else:
                found = await self._access_tokens.get(jti)
        except Exception as exc:
            if (outage := self.availability.translate(exc)) is None:
                raise
            raise outage from exc
        self.availability.available()
        return found

    async def _read_access_tokens(self, jtis: list[str]) -> dict[str, AccessTokenRecord]:
        async with self.pool.acquire(timeout=self.timeout) as connection:
            rows = await connection.fetch(_SELECT_ACCESS_MANY_PG, jtis)
        return {row[0]: AccessTokenRecord(*row) for row in rows}

    async def prefetch_exchange(
        self, jti: str, client_id: str, branch_id: str, provider: str
    ) -> ExchangePrefetch:
        """Token exchange's read (storage.exchange): the subject token's row and the
        exchange target; coalesced across concurrent requests on PostgreSQL."""
        try:
            if self.pool is None:
                found = await prefetch_exchange(
                    self.engine,
                    jti=jti,
                    client_id=client_id,
                    branch_id=branch_id,
                    provider=provider,
                )
            else:
                found = await self._exchanges.get((jti, client_id, branch_id, provider))
        except Exception as exc:
            if (outage := self.availability.translate(exc)) is None:
                raise
            raise outage from exc
        self.availability.available()
        assert found is not None  # one row per key: the statement outer-joins everything
        return found


class Coalescer(Generic[K, V]):
    """Batches concurrent keyed reads: at most `limit` `fetch_many` calls in flight per
    process; keys that arrive meanwhile wait and go together in the next call (at most
    `MAX_BATCH`). No waiting when idle. `fetch_many(keys)` returns {key: value} (missing
    keys read as None); when it raises, every caller of that batch gets the exception.
    """

    def __init__(self, fetch_many: Callable[[list[K]], Awaitable[dict[K, V]]], limit: int) -> None:
        self.fetch_many = fetch_many
        self.limit = limit
        self._waiting: list[tuple[K, asyncio.Future[V | None]]] = []
        self._running = 0

    async def get(self, key: K) -> V | None:
        """`key`'s value from the batch it joined (None if `fetch_many` returned none);
        raises what that batch's `fetch_many` raised."""
        found: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, found))
        if self._running < self.limit:
            self._running += 1
            try:
                await self._drain()
            finally:
                self._running -= 1
        return await found

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                values = await self.fetch_many(list(dict.fromkeys(key for key, _ in batch)))
            except Exception as exc:  # every caller of the batch fails with it
                for _, found in batch:
                    if not found.done():
                        found.set_exception(exc)
                continue
            for key, found in batch:
                if not found.done():
                    found.set_result(values.get(key))


_ACCESS_COLUMNS = list(AccessTokenRecord.__dataclass_fields__)
_SELECT_ACCESS = select(*(AccessToken.__table__.c[c] for c in _ACCESS_COLUMNS)).where(
    AccessToken.__table__.c.jti == bindparam("jti")
)
_SELECT_ACCESS_MANY_PG = (
    f"SELECT {', '.join(_ACCESS_COLUMNS)} FROM oauth2_access_tokens"  # noqa: S608
    " WHERE jti = ANY($1::varchar[])"
)
