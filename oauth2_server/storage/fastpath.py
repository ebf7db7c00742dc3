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

Such a request authenticated its client from a worker's cached `ClientRecord`, so its
writes carry a `ClientGuard` (client id, the cached record's `version`): they are written
only if, in the same statement, the client row is still active at that version
(`WHERE EXISTS …`); otherwise nothing is written and `apply` answers False, and the caller
re-reads the client (DESIGN.md invariant 9). Introspection's read returns, in the same
statement as the token row, whether the token's client is still active and the current
state (`ClientState`) of the client that asks.

Every public method raises `storage.errors.DatabaseUnavailable` in place of a driver or pool
error that means the database is unreachable or did not answer within `OAUTH2_DB_TIMEOUT`
(the asyncpg pool's connect, acquire and command timeout).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import JSON, Insert, Table
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from oauth2_server import metrics
from oauth2_server.storage.client_state import (
    ACCESS_COLUMNS,
    SELECT_ACCESS,
    SELECT_CURRENT,
    SELECT_CURRENT_PG,
    SELECT_INTROSPECTION_PG,
    SELECT_STATE,
    ClientGuard,
    ClientState,
    IntrospectionRead,
    guarded_insert,
    guarded_params,
    guarded_write_sql,
)
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
        self._pending: list[_Pending] = []
        self._flushers = 0
        self._introspections: Coalescer[tuple[str, str | None], IntrospectionRead] = Coalescer(
            self._read_introspections, MAX_READERS
        )
        self._exchanges: Coalescer[PrefetchKey, ExchangePrefetch] = Coalescer(
            lambda keys: prefetch_exchanges(self.pool, keys), MAX_READERS
        )
        self._guarded_inserts: dict[tuple[str, tuple[str, ...]], Any] = {}

    def _insert_sql(
        self, requests: int, groups: Sequence[tuple[Table, tuple[str, ...], int]]
    ) -> str:
        """`client_state.guarded_write_sql`, cached per shape."""
        key = (requests, tuple((table.name, columns, count) for table, columns, count in groups))
        sql = self._sql.get(key)
        if sql is None:
            sql = guarded_write_sql(requests, groups)
            if len(self._sql) < 4096:
                self._sql[key] = sql
        return sql

    def _guarded_insert(self, table: Table, columns: tuple[str, ...]) -> Any:
        """`client_state.guarded_insert`, cached per (table, columns)."""
        statement = self._guarded_inserts.get((table.name, columns))
        if statement is None:
            statement = guarded_insert(table, columns)
            self._guarded_inserts[(table.name, columns)] = statement
        return statement

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

    def _acquire(self) -> metrics.CountWaiting:
        """A pooled connection (`async with`) within `timeout`; the wait is counted in
        `oauth2_db_pool_waiting{pool="asyncpg"}`."""
        return metrics.CountWaiting(self.pool.acquire(timeout=self.timeout), "asyncpg")

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def apply(self, writes: DeferredWrites, guard: ClientGuard | None = None) -> bool:
        """Write every collected row in one transaction if `guard` holds (client active at
        the guarded version, checked in the same statement); return once committed.

        True if written (or nothing to write); False if the guard failed: then nothing
        was written, and the caller must re-read the client rather than answer from the
        record it guarded (DESIGN.md invariant 9).

        On PostgreSQL, requests that arrive while `MAX_FLUSHERS` statements are already in
        flight are coalesced: their rows go out together in the next single statement (no
        waiting when the store is idle), each request's rows under its own guard. Each
        request still returns only after the statement holding its rows has committed,
        and a failed statement fails every request in it, so no token is handed out that
        is not durably stored. Raises DatabaseUnavailable when the database is unreachable.
        """
        if not writes.rows:
            return True
        with self.availability.guard():
            written = await self._apply(writes, guard)
        return written

    async def _apply(self, writes: DeferredWrites, guard: ClientGuard | None) -> bool:
        if self.pool is None:
            rows = writes.rows
            async with self.engine.begin() as connection:
                if guard is not None:
                    # The first row goes in only if the client is current: one statement,
                    # which also takes SQLite's write lock until this transaction commits.
                    table, first = rows[0]
                    result = await connection.execute(
                        self._guarded_insert(table, tuple(first)), guarded_params(first, guard)
                    )
                    if result.rowcount != 1:
                        return False  # nothing written
                    rows = rows[1:]
                for table, row in rows:
                    await connection.execute(table.insert(), row)
            return True
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(writes.rows, guard, done))
        if self._flushers < MAX_FLUSHERS:
            self._flushers += 1
            try:
                await self._flush()
            finally:
                self._flushers -= 1
        return await done

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            args: list[Any] = []
            groups: dict[tuple[str, tuple[str, ...]], list[tuple[int, dict[str, Any]]]] = {}
            tables: dict[str, Table] = {}
            for n, pending in enumerate(batch):
                guard = pending.guard
                args += [n, guard.client_id, guard.version] if guard else [n, None, None]
                for table, row in pending.rows:
                    tables[table.name] = table
                    groups.setdefault((table.name, tuple(row)), []).append((n, row))
            shape = [(tables[name], columns, len(rows)) for (name, columns), rows in groups.items()]
            for (name, columns), rows in groups.items():
                for n, row in rows:
                    args.append(n)
                    args += _pg_values(tables[name], row, columns)
            try:
                async with self._acquire() as connection:
                    passed = {
                        record[0]
                        for record in await connection.fetch(
                            self._insert_sql(len(batch), shape), *args
                        )
                    }
            except Exception as exc:  # every request of the batch fails with it
                for pending in batch:
                    if not pending.done.done():
                        pending.done.set_exception(exc)
            else:
                for n, pending in enumerate(batch):
                    if not pending.done.done():
                        pending.done.set_result(n in passed)

    async def client_current(self, guard: ClientGuard) -> bool:
        """True if the client is still active at the guarded version (one primary-key
        read; for answers that write nothing). Raises DatabaseUnavailable."""
        with self.availability.guard():
            if self.pool is None:
                async with self.engine.connect() as connection:
                    found = (
                        await connection.execute(
                            SELECT_CURRENT, {"client_id": guard.client_id, "version": guard.version}
                        )
                    ).first()
            else:
                async with self._acquire() as connection:
                    found = await connection.fetchrow(
                        SELECT_CURRENT_PG, guard.client_id, guard.version
                    )
        return found is not None

    async def copy_rows(self, table: Table, rows: list[dict[str, Any]]) -> None:
        """Insert many rows of one shape in one transaction, outside the coalesced token
        writes: PostgreSQL's COPY protocol on asyncpg (no statement to prepare, little
        client CPU), a multi-row insert through SQLAlchemy elsewhere."""
        if not rows:
            return
        with self.availability.guard():
            await self._copy_rows(table, rows)

    async def _copy_rows(self, table: Table, rows: list[dict[str, Any]]) -> None:
        if self.pool is None:
            async with self.engine.begin() as connection:
                await connection.execute(table.insert(), rows)
            return
        columns = list(rows[0])
        records = [tuple(_pg_values(table, row, columns)) for row in rows]
        async with self._acquire() as connection:
            await connection.copy_records_to_table(table.name, records=records, columns=columns)

    async def introspection(self, jti: str, caller_id: str | None) -> IntrospectionRead:
        """Introspection's read (RFC 7662 §2.2) in one statement: the access-token row by
        `jti`, whether its client is still active (a deactivated or deleted client's
        tokens are inactive, including any written in a race with the change), and the
        current `ClientState` of `caller_id`, the client the request names.

        On PostgreSQL, reads that arrive while `MAX_READERS` are in flight are coalesced
        (`Coalescer`): the next statement reads all of them. Raises DatabaseUnavailable.
        """
        with self.availability.guard():
            if self.pool is None:
                found = await self._read_introspection_sqlite(jti, caller_id)
            else:
                found = await self._introspections.get((jti, caller_id))
        assert found is not None  # one row per key: the statement outer-joins everything
        return found

    async def _read_introspection_sqlite(
        self, jti: str, caller_id: str | None
    ) -> IntrospectionRead:
        async with self.engine.connect() as connection:
            row = (await connection.execute(SELECT_ACCESS, {"jti": jti})).first()
            caller = None
            if caller_id is not None:
                caller = (await connection.execute(SELECT_STATE, {"client_id": caller_id})).first()
        access = AccessTokenRecord(*row[:-1]) if row is not None else None
        return IntrospectionRead(
            access,
            bool(row is not None and row[-1]),
            ClientState(caller_id, bool(caller[0]), caller[1]) if caller is not None else None,
        )

    async def _read_introspections(
        self, keys: list[tuple[str, str | None]]
    ) -> dict[tuple[str, str | None], IntrospectionRead]:
        async with self._acquire() as connection:
            rows = await connection.fetch(
                SELECT_INTROSPECTION_PG, [jti for jti, _ in keys], [c for _, c in keys]
            )
        found: dict[tuple[str, str | None], IntrospectionRead] = {}
        width = len(ACCESS_COLUMNS)
        for row in rows:
            access = row[2 : 2 + width]
            client_active, caller_active, caller_version = row[2 + width :]
            found[(row[0], row[1])] = IntrospectionRead(
                AccessTokenRecord(*access) if access[0] is not None else None,
                bool(client_active),
                ClientState(row[1], caller_active, caller_version)
                if caller_active is not None
                else None,
            )
        return found

    async def prefetch_exchange(
        self, jti: str, client_id: str, branch_id: str, provider: str
    ) -> ExchangePrefetch:
        """Token exchange's read (storage.exchange): the subject token's row and the
        exchange target; coalesced across concurrent requests on PostgreSQL."""
        with self.availability.guard():
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


@dataclass(frozen=True)
class _Pending:
    """One request's rows waiting for a coalesced statement, and what it waits on."""

    rows: list[tuple[Table, dict[str, Any]]]
    guard: ClientGuard | None
    done: asyncio.Future[bool]
