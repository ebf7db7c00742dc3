"""Checking a cached client against its row, in the statement that acts on it (DESIGN.md
invariant 9): the types and statement `storage.fastpath` uses.

Every change of a client row bumps its `version` (`storage.clients`). A request
answered from a worker's cached `ClientRecord` carries a `ClientGuard` (client id, the
cached version): its writes go in only `WHERE EXISTS` the client row still active at that
version (`guarded_write_sql` on PostgreSQL; on SQLite `storage.fastpath` reads the row
in the transaction of the writes), and introspection's read (`storage.introspection`)
returns, with the token row, the token's client's `active` flag and the asking client's
current `ClientState`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql

from oauth2_server.storage.tokens import AccessTokenRecord


@dataclass(frozen=True)
class ClientGuard:
    """Write only if client `client_id` is still active at `version` (the version of the
    cached record the request was authenticated and authorised with)."""

    client_id: str
    version: int


@dataclass(frozen=True)
class ClientState:
    """A client row's current `active` flag and `version`, read with other data."""

    client_id: str
    active: bool
    version: int

    def holds(self, guard: ClientGuard) -> bool:
        """True if a request checked by `guard` acts on this (current) state."""
        return self.client_id == guard.client_id and self.active and self.version == guard.version


@dataclass(frozen=True)
class IntrospectionRead:
    """Introspection's read (RFC 7662 §2.2), one statement: the token row (None if
    unknown), whether the token's client still exists and is active, and the current
    state of the client that asks (None if unknown or none was named)."""

    access: AccessTokenRecord | None
    client_active: bool
    caller: ClientState | None


_PG_DIALECT = postgresql.dialect()


def _pg_type(table: Table, name: str) -> str:
    """The column's PostgreSQL type for an explicit cast (VARCHAR without its length: the
    insert still checks the length, a cast would silently cut)."""
    compiled = table.c[name].type.compile(dialect=_PG_DIALECT)
    return re.sub(r"^VARCHAR\(\d+\)$", "VARCHAR", compiled)


def guarded_write_sql(requests: int, groups: Sequence[tuple[Table, tuple[str, ...], int]]) -> str:
    """PostgreSQL: the coalesced write of `requests` requests, each under its own guard:

        WITH ok AS (SELECT k.n FROM (VALUES ($1::INTEGER, $2::VARCHAR, $3::INTEGER), …)
                      AS k(n, client_id, version)
                    WHERE k.client_id IS NULL OR EXISTS (SELECT 1 FROM oauth2_clients c
                      WHERE c.client_id = k.client_id AND c.active
                      AND c.version = k.version)),
             w0 AS (INSERT INTO t (a, b) SELECT v.a, v.b FROM (VALUES ($4::INTEGER,
                      $5::…, $6::…), …) AS v(n, a, b) WHERE v.n IN (SELECT n FROM ok)),
             …
        SELECT n FROM ok

    `n` numbers the requests (0…requests-1); `groups` are (table, columns, row count).
    Parameters: (n, client id, version) per request (NULL id: no guard), then per group
    and row (n, values…). The rows of request `n` are written only if `n` passed its
    guard; the answer lists the `n` that passed. The parameters are typed by explicit
    casts, as a VALUES list in FROM does not take its types from the insert's columns.
    """
    number = 0

    def params(types: Sequence[str]) -> str:
        nonlocal number
        placeholders = [f"${number + i + 1}::{kind}" for i, kind in enumerate(types)]
        number += len(types)
        return f"({', '.join(placeholders)})"

    guards = ", ".join(params(("INTEGER", "VARCHAR", "INTEGER")) for _ in range(requests))
    ctes = [
        f"ok AS (SELECT k.n FROM (VALUES {guards}) AS k(n, client_id, version)"  # noqa: S608
        " WHERE k.client_id IS NULL OR EXISTS (SELECT 1 FROM oauth2_clients c"
        " WHERE c.client_id = k.client_id AND c.active AND c.version = k.version))"
    ]
    for index, (table, columns, count) in enumerate(groups):
        # Identifiers come from table metadata (a KeyError for anything else); values are
        # always bound parameters.
        names = [f'"{table.c[name].name}"' for name in columns]
        types = ["INTEGER"] + [_pg_type(table, name) for name in columns]
        rows = ", ".join(params(types) for _ in range(count))
        ctes.append(
            f'w{index} AS (INSERT INTO "{table.name}" ({", ".join(names)})'  # noqa: S608
            f" SELECT {', '.join('v.' + name for name in names)}"
            f" FROM (VALUES {rows}) AS v(n, {', '.join(names)})"
            " WHERE v.n IN (SELECT n FROM ok))"
        )
    return f"WITH {', '.join(ctes)} SELECT n FROM ok"  # noqa: S608 (parts built above)
