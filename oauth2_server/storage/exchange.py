"""Token exchange's reads (RFC 8693; DESIGN.md "Upstream brokering" 3): for one
(client, branch, provider), the branch's state, the client's grant of it and the branch's
upstream grant, in one round trip; on the hot path together with the subject token's row,
in one statement outside any transaction.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, and_, bindparam, exists, func, literal, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from oauth2_server.db.models import (
    AccessToken,
    Branch,
    BranchUpstreamLink,
    ClientBranchGrant,
    UpstreamCredential,
)
from oauth2_server.storage.branches import ALL_BRANCHES
from oauth2_server.storage.tokens import AccessTokenRecord
from oauth2_server.storage.upstream import CREDENTIAL_COLUMNS, CredentialRow


@dataclass(frozen=True)
class ExchangeTarget:
    """What token exchange needs to know about (client, branch, provider), in one read.

    `credential` is None when the branch is not connected to the provider.
    """

    branch_active: bool
    granted: bool
    credential: CredentialRow | None


_GRANTED = (
    exists()
    .where(
        ClientBranchGrant.client_id == bindparam("client_id"),
        ClientBranchGrant.branch_id.in_([bindparam("branch_id"), ALL_BRANCHES]),
    )
    .label("granted")
)
_EXCHANGE_TARGET = (
    select(Branch.active, _GRANTED, *CREDENTIAL_COLUMNS)
    .select_from(Branch)
    .outerjoin(
        BranchUpstreamLink,
        and_(
            BranchUpstreamLink.branch_id == Branch.branch_id,
            BranchUpstreamLink.provider == bindparam("provider"),
        ),
    )
    .outerjoin(UpstreamCredential, UpstreamCredential.id == BranchUpstreamLink.credential_id)
    .where(Branch.branch_id == bindparam("branch_id"))
)


def exchange_target(
    session: Session, client_id: str, branch_id: str, provider: str
) -> ExchangeTarget | None:
    """Branch state, the client's grant of it, and the branch's grant at `provider`, in
    one round trip. None if the branch does not exist."""
    row = (
        session.connection()
        .execute(
            _EXCHANGE_TARGET,
            {"client_id": client_id, "branch_id": branch_id, "provider": provider},
        )
        .first()
    )
    if row is None:
        return None
    active, granted, *credential = row
    return ExchangeTarget(
        branch_active=bool(active),
        granted=bool(granted),
        credential=CredentialRow(*credential) if credential[0] is not None else None,
    )


# -- token exchange's hot path: both reads in one statement, outside any transaction -----


@dataclass(frozen=True)
class ExchangePrefetch:
    """The subject token's row and the exchange target, read before the grant runs (so
    the grant can run on the bridge's deferred-write path, like introspection's).

    Keyed by what the request claims (`jti`, client id, branch, provider); the grant uses
    it only when the authenticated client and the verified subject token match the key.
    """

    jti: str
    client_id: str
    branch_id: str
    provider: str
    access: AccessTokenRecord | None
    target: ExchangeTarget | None

    def matches(self, jti: str, client_id: str, branch_id: str, provider: str) -> bool:
        return (self.jti, self.client_id, self.branch_id, self.provider) == (
            jti,
            client_id,
            branch_id,
            provider,
        )


_ACCESS_TABLE = AccessToken.__table__
_ACCESS_COLUMNS = [_ACCESS_TABLE.c[name] for name in AccessTokenRecord.__dataclass_fields__]
_ONE = select(literal(1).label("one")).subquery("one")
_PREFETCH = (
    select(*_ACCESS_COLUMNS, Branch.branch_id, Branch.active, _GRANTED, *CREDENTIAL_COLUMNS)
    .select_from(_ONE)
    .outerjoin(_ACCESS_TABLE, _ACCESS_TABLE.c.jti == bindparam("jti"))
    .outerjoin(Branch, Branch.branch_id == bindparam("branch_id"))
    .outerjoin(
        BranchUpstreamLink,
        and_(
            BranchUpstreamLink.branch_id == Branch.branch_id,
            BranchUpstreamLink.provider == bindparam("provider"),
        ),
    )
    .outerjoin(UpstreamCredential, UpstreamCredential.id == BranchUpstreamLink.credential_id)
)


_KEY_NAMES = ("jti", "client_id", "branch_id", "provider")
_KEYS = (
    func.unnest(*(bindparam(f"{name}s", type_=ARRAY(String)) for name in _KEY_NAMES))
    .table_valued(*_KEY_NAMES)
    .render_derived(name="keys")
)
_PREFETCH_MANY = (
    select(
        *(_KEYS.c[name] for name in _KEY_NAMES),
        *_ACCESS_COLUMNS,
        Branch.branch_id,
        Branch.active,
        exists()
        .where(
            ClientBranchGrant.client_id == _KEYS.c.client_id,
            ClientBranchGrant.branch_id.in_([_KEYS.c.branch_id, literal(ALL_BRANCHES)]),
        )
        .label("granted"),
        *CREDENTIAL_COLUMNS,
    )
    .select_from(_KEYS)
    .outerjoin(_ACCESS_TABLE, _ACCESS_TABLE.c.jti == _KEYS.c.jti)
    .outerjoin(Branch, Branch.branch_id == _KEYS.c.branch_id)
    .outerjoin(
        BranchUpstreamLink,
        and_(
            BranchUpstreamLink.branch_id == Branch.branch_id,
            BranchUpstreamLink.provider == _KEYS.c.provider,
        ),
    )
    .outerjoin(UpstreamCredential, UpstreamCredential.id == BranchUpstreamLink.credential_id)
)


@functools.cache
def _prefetch_many_pg() -> tuple[str, tuple[str, ...], dict[str, Any]]:
    """`_PREFETCH_MANY` compiled once for raw asyncpg: SQL, parameter order, constants."""
    from sqlalchemy.dialects.postgresql.asyncpg import dialect

    compiled = _PREFETCH_MANY.compile(dialect=dialect())
    return str(compiled), tuple(compiled.positiontup or ()), dict(compiled.params)


PrefetchKey = tuple[str, str, str, str]  # (jti, client_id, branch_id, provider)


def _prefetched(key: PrefetchKey, values: list[Any]) -> ExchangePrefetch:
    """An ExchangePrefetch from the columns after the key: access token, branch, grant,
    credential (all NULL where the outer joins found nothing)."""
    access_values = values[: len(_ACCESS_COLUMNS)]
    branch, active, granted, *credential = values[len(_ACCESS_COLUMNS) :]
    access = AccessTokenRecord(*access_values) if access_values[0] is not None else None
    target = None
    if branch is not None:
        target = ExchangeTarget(
            branch_active=bool(active),
            granted=bool(granted),
            credential=CredentialRow(*credential) if credential[0] is not None else None,
        )
    return ExchangePrefetch(*key, access, target)


async def prefetch_exchange(
    engine: AsyncEngine, *, jti: str, client_id: str, branch_id: str, provider: str
) -> ExchangePrefetch:
    """Read the subject token's row and the exchange target in one statement through
    `engine` (the embedded database's hot path; on PostgreSQL, FastStore batches
    concurrent requests with `prefetch_exchanges`)."""
    key = (jti, client_id, branch_id, provider)
    params = {"jti": jti, "client_id": client_id, "branch_id": branch_id, "provider": provider}
    async with engine.connect() as connection:
        row = (await connection.execute(_PREFETCH, params)).first()
    assert row is not None  # FROM (SELECT 1): always one row
    return _prefetched(key, list(row))


async def prefetch_exchanges(
    pool: Any, keys: list[PrefetchKey]
) -> dict[PrefetchKey, ExchangePrefetch]:
    """`prefetch_exchange` for several requests in one statement on PostgreSQL (asyncpg
    `pool`): one row per key, from `unnest` of the keys joined like `_PREFETCH`.
    Returns {(jti, client_id, branch_id, provider): ExchangePrefetch}."""
    sql, order, constants = _prefetch_many_pg()
    arrays = {f"{name}s": [key[i] for key in keys] for i, name in enumerate(_KEY_NAMES)}
    values = {**constants, **arrays}
    async with pool.acquire() as connection:
        rows = await connection.fetch(sql, *(values[name] for name in order))
    found: dict[PrefetchKey, ExchangePrefetch] = {}
    width = len(_KEY_NAMES)
    for row in rows:
        values_ = list(row)
        key: PrefetchKey = (values_[0], values_[1], values_[2], values_[3])
        found[key] = _prefetched(key, values_[width:])
    return found
