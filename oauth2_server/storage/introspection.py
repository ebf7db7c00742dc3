"""Introspection's read (RFC 7662 §2.2), defined once: per (`jti`, caller) key, the
access-token row, whether the token's client still exists and is active (a deactivated
or deleted client's tokens are inactive, including any written in a race with the
change), and the current `ClientState` of the client that asks (DESIGN.md invariant 9).

One builder over a source of keys, in two forms: one key as bound parameters
(SQLAlchemy, any backend) and many keys as arrays (`unnest`, PostgreSQL's coalesced read).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, String, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import aliased

from oauth2_server.db.models import AccessToken, Client
from oauth2_server.storage.client_state import ClientState, IntrospectionRead
from oauth2_server.storage.tokens import ACCESS_TOKEN_COLUMNS, AccessTokenRecord

IntrospectionKey = tuple[str, str | None]  # (jti, the asking client's id)
_KEY_NAMES = ("jti", "caller")


def _introspection_read(keys: Any) -> Select[Any]:
    """THE introspection read over a source of keys (`jti`, `caller`)."""
    token_client = aliased(Client, name="token_client")
    caller = aliased(Client, name="caller_client")
    return (
        select(
            keys.c.jti,
            keys.c.caller,
            *ACCESS_TOKEN_COLUMNS,
            token_client.active,
            caller.active,
            caller.version,
        )
        .select_from(keys)
        .outerjoin(AccessToken, AccessToken.jti == keys.c.jti)
        .outerjoin(token_client, token_client.client_id == AccessToken.client_id)
        .outerjoin(caller, caller.client_id == keys.c.caller)
    )


INTROSPECTION_READ = _introspection_read(
    select(*(bindparam(name, type_=String).label(name) for name in _KEY_NAMES)).subquery("keys")
)
INTROSPECTION_READ_MANY = _introspection_read(
    func.unnest(*(bindparam(f"{name}s", type_=ARRAY(String)) for name in _KEY_NAMES))
    .table_valued(*_KEY_NAMES)
    .render_derived(name="keys")
)


def introspection_params(keys: list[IntrospectionKey]) -> dict[str, list[Any]]:
    """`INTROSPECTION_READ_MANY`'s parameters: one array per key part."""
    return {"jtis": [jti for jti, _ in keys], "callers": [caller for _, caller in keys]}


def introspection_result(row: Sequence[Any]) -> IntrospectionRead:
    """An IntrospectionRead from one row of either form (after its two key columns)."""
    caller_id = row[1]
    width = len(ACCESS_TOKEN_COLUMNS)
    access = row[2 : 2 + width]
    client_active, caller_active, caller_version = row[2 + width :]
    return IntrospectionRead(
        AccessTokenRecord(*access) if access[0] is not None else None,
        bool(client_active),
        ClientState(caller_id, bool(caller_active), caller_version)
        if caller_active is not None
        else None,
    )
