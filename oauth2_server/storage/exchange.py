"""Token exchange's read (RFC 8693 §2.1; DESIGN.md "Upstream brokering" 3), defined once
(`_exchange_read`): per (`jti`, client, branch, provider) key, the subject token's row,
the branch's state, the client's grant of it and the branch's upstream grant (the branch
join is `storage.upstream.join_branch_grant`), in one statement. Two forms of the same
builder: one key as bound parameters (`EXCHANGE_READ`, SQLAlchemy, any backend; also the
session path's `exchange_target`) and many keys as arrays (`EXCHANGE_READ_MANY`,
PostgreSQL's coalesced read).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, String, bindparam, exists, func, literal, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from oauth2_server.db.models import (
    AccessToken,
    Branch,
    ClientBranchGrant,
)
from oauth2_server.storage.branches import ALL_BRANCHES
from oauth2_server.storage.tokens import ACCESS_TOKEN_COLUMNS, AccessTokenRecord
from oauth2_server.storage.upstream import CREDENTIAL_COLUMNS, CredentialRow, join_branch_grant


@dataclass(frozen=True)
class ExchangeTarget:
    """What token exchange needs to know about (client, branch, provider), in one read.

    `credential` is None when the branch is not connected to the provider.
    """

    branch_active: bool
    granted: bool
    credential: CredentialRow | None


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


PrefetchKey = tuple[str, str, str, str]  # (jti, client_id, branch_id, provider)
_KEY_NAMES = ("jti", "client_id", "branch_id", "provider")


def _exchange_read(keys: Any) -> Select[Any]:
    """THE exchange read, defined once over a source of keys (`jti`, `client_id`,
    `branch_id`, `provider`): per key, the key, the subject token's row, the branch's
    id and `active` flag, whether the client is granted the branch (or `*`), and the
    branch's upstream grant at the provider (NULLs where an outer join found nothing)."""
    granted = (
        exists()
        .where(
            ClientBranchGrant.client_id == keys.c.client_id,
            ClientBranchGrant.branch_id.in_([keys.c.branch_id, literal(ALL_BRANCHES)]),
        )
        .label("granted")
    )
    stmt = (
        select(
            *(keys.c[name] for name in _KEY_NAMES),
            *ACCESS_TOKEN_COLUMNS,
            Branch.branch_id,
            Branch.active,
            granted,
            *CREDENTIAL_COLUMNS,
        )
        .select_from(keys)
        .outerjoin(AccessToken, AccessToken.jti == keys.c.jti)
        .outerjoin(Branch, Branch.branch_id == keys.c.branch_id)
    )
    return join_branch_grant(stmt, keys.c.provider)


# One key as bound parameters (SQLAlchemy, any backend).
_ONE_KEY = select(*(bindparam(name, type_=String).label(name) for name in _KEY_NAMES)).subquery(
    "keys"
)
EXCHANGE_READ = _exchange_read(_ONE_KEY)
# Many keys as arrays (PostgreSQL: `unnest`), for coalesced reads.
_MANY_KEYS = (
    func.unnest(*(bindparam(f"{name}s", type_=ARRAY(String)) for name in _KEY_NAMES))
    .table_valued(*_KEY_NAMES)
    .render_derived(name="keys")
)
EXCHANGE_READ_MANY = _exchange_read(_MANY_KEYS)


def exchange_params(keys: list[PrefetchKey]) -> dict[str, list[str]]:
    """`EXCHANGE_READ_MANY`'s parameters: one array per key part."""
    return {f"{name}s": [key[i] for key in keys] for i, name in enumerate(_KEY_NAMES)}


def exchange_prefetch(row: Sequence[Any]) -> ExchangePrefetch:
    """An ExchangePrefetch from one row of either form of the exchange read."""
    width = len(_KEY_NAMES)
    jti, client_id, branch_id, provider = row[:width]
    access_values = row[width : width + len(ACCESS_TOKEN_COLUMNS)]
    branch, active, granted, *credential = row[width + len(ACCESS_TOKEN_COLUMNS) :]
    access = AccessTokenRecord(*access_values) if access_values[0] is not None else None
    target = None
    if branch is not None:
        target = ExchangeTarget(
            branch_active=bool(active),
            granted=bool(granted),
            credential=CredentialRow(*credential) if credential[0] is not None else None,
        )
    return ExchangePrefetch(jti, client_id, branch_id, provider, access, target)


def exchange_target(
    session: Session, client_id: str, branch_id: str, provider: str
) -> ExchangeTarget | None:
    """Branch state, the client's grant of it, and the branch's grant at `provider`, in
    one round trip (the exchange read without a subject token). None if the branch does
    not exist."""
    params = {"jti": None, "client_id": client_id, "branch_id": branch_id, "provider": provider}
    row = session.execute(EXCHANGE_READ, params).first()
    assert row is not None  # FROM one key: always one row
    return exchange_prefetch(list(row)).target
