"""Client rows (`oauth2_clients`; RFC 6749 §2, RFC 7591 metadata names).

The rules a client's metadata must follow are `registry.clients`; this module reads and
writes rows. Secrets are generated here (≥ 256 bits from `secrets`) and stored as their
`sha256$` hash (`crypto.hashing.hash_client_secret`); `ClientView`, what admins see,
never carries the hash.

Every change of a client row goes through this module: it adds one to the row's `version`
in the same UPDATE and queues a `NOTIFY` in the same transaction
(`storage.client_notify`), so no worker acts on the old row once the change has committed
(DESIGN.md invariant 9; README "Client changes take effect at once").
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from oauth2_server.crypto.hashing import hash_client_secret
from oauth2_server.db.models import AuthorizationCode, Client
from oauth2_server.storage import utcnow
from oauth2_server.storage.client_notify import note_client_changed
from oauth2_server.storage.subjects import claim_subject

ADMIN_SCOPE = "admin"
PUBLIC_METHOD = "none"  # noqa: S105 (an auth method name, RFC 7591 §2)
KEY_METHOD = "private_key_jwt"  # RFC 7523 §2.2: keys, no secret
UPDATABLE = (
    "name",
    "grant_types",
    "redirect_uris",
    "scope",
    "active",
    "person",
    "require_pushed_authorization_requests",
    "dpop_bound_access_tokens",
    "jwks",
    "jwks_uri",
    "resources",
)


@dataclass(frozen=True)
class ClientRecord:
    """An immutable snapshot of a client row, safe to cache between changes: `version` is
    the row's version when read (every change bumps it)."""

    client_id: str
    name: str
    secret_hash: str | None = field(repr=False)
    token_endpoint_auth_method: str
    grant_types: tuple[str, ...]
    redirect_uris: tuple[str, ...]
    scope: str
    active: bool
    updated_at: datetime
    version: int = 1
    require_pushed_authorization_requests: bool = False  # RFC 9126 §6
    dpop_bound_access_tokens: bool = False  # RFC 9449 §5.2
    jwks: dict[str, Any] | None = field(default=None, repr=False, hash=False)  # RFC 7523 §2.2
    jwks_uri: str | None = None
    resources: tuple[str, ...] = ()  # RFC 8707 §2: the resources it may name

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(self.scope.split())


@dataclass(frozen=True)
class ClientView:
    """A client as the admin API shows it: everything but the secret hash. `person`: the
    named person it is registered to (null: none); `bootstrap`: the first start's admin
    client (issue #11 item 2)."""

    client_id: str
    name: str
    token_endpoint_auth_method: str
    grant_types: list[str]
    redirect_uris: list[str]
    scope: str
    active: bool
    created_at: datetime
    updated_at: datetime
    person: str | None = None
    bootstrap: bool = False
    require_pushed_authorization_requests: bool = False
    dpop_bound_access_tokens: bool = False
    jwks: dict[str, Any] | None = field(default=None, hash=False)  # RFC 7517 §5 JWK Set
    jwks_uri: str | None = None
    resources: list[str] = field(default_factory=list)  # RFC 8707 §2


_VIEW_COLUMNS = (  # the fields of ClientView, in order
    Client.client_id,
    Client.name,
    Client.token_endpoint_auth_method,
    Client.grant_types,
    Client.redirect_uris,
    Client.scope,
    Client.active,
    Client.created_at,
    Client.updated_at,
    Client.person,
    Client.bootstrap,
    Client.require_pushed_authorization_requests,
    Client.dpop_bound_access_tokens,
    Client.jwks,
    Client.jwks_uri,
    Client.resources,
)


def new_client_id() -> str:
    """A fresh client identifier (RFC 6749 §2.2): 128 random bits, URL-safe base64, never
    starting with `-` or `_`, so it can follow an option on any command line
    (`oauth2-server branches grant B --client ID`) without being read as one."""
    while True:
        client_id = secrets.token_urlsafe(16)
        if client_id[0].isalnum():
            return client_id


def _record(row: Client) -> ClientRecord:
    return ClientRecord(
        client_id=row.client_id,
        name=row.name,
        secret_hash=row.secret_hash,
        token_endpoint_auth_method=row.token_endpoint_auth_method,
        grant_types=tuple(row.grant_types),
        redirect_uris=tuple(row.redirect_uris),
        scope=row.scope,
        active=row.active,
        updated_at=row.updated_at,
        version=row.version,
        require_pushed_authorization_requests=row.require_pushed_authorization_requests,
        dpop_bound_access_tokens=row.dpop_bound_access_tokens,
        jwks=row.jwks,
        jwks_uri=row.jwks_uri,
        resources=tuple(row.resources or ()),
    )


def get_client(session: Session, client_id: str) -> ClientRecord | None:
    """The client with this id (active or not), or None."""
    row = session.scalars(select(Client).where(Client.client_id == client_id)).first()
    return _record(row) if row else None


def get_client_view(session: Session, client_id: str) -> ClientView | None:
    """The admin view of the client with this id, or None."""
    row = session.execute(select(*_VIEW_COLUMNS).where(Client.client_id == client_id)).first()
    return ClientView(*row) if row else None


def count_clients(session: Session) -> int:
    """Number of registered clients (the first-run bootstrap checks for zero)."""
    return session.scalar(select(func.count()).select_from(Client)) or 0


def list_clients(
    session: Session, after_id: int | None, limit: int
) -> list[tuple[int, ClientView]]:
    """Up to `limit` clients in registration order after row id `after_id`, as
    (row id, view) pairs (the row id is the keyset position)."""
    stmt = select(Client.id, *_VIEW_COLUMNS).order_by(Client.id).limit(limit)
    if after_id is not None:
        stmt = stmt.where(Client.id > after_id)
    return [(row[0], ClientView(*row[1:])) for row in session.execute(stmt)]


def client_name_taken(session: Session, name: str, except_client_id: str | None = None) -> bool:
    """True if another client has this name (case-insensitive)."""
    stmt = select(Client.id).where(func.lower(Client.name) == name.lower())
    if except_client_id is not None:
        stmt = stmt.where(Client.client_id != except_client_id)
    return session.scalars(stmt.limit(1)).first() is not None


def create_client(
    session: Session,
    *,
    name: str,
    grant_types: Sequence[str],
    redirect_uris: Sequence[str],
    scope: str,
    public: bool = False,
    token_endpoint_auth_method: str | None = None,
    client_id: str | None = None,
    person: str | None = None,
    bootstrap: bool = False,
    require_pushed_authorization_requests: bool = False,
    dpop_bound_access_tokens: bool = False,
    jwks: dict[str, Any] | None = None,
    jwks_uri: str | None = None,
    resources: Sequence[str] = (),
) -> tuple[ClientRecord, str | None]:
    """Insert a client row whose metadata the caller validated (`registry.clients`).
    Returns (record, client secret to show once; None for a public client).

    The method defaults by `public` (`none` or `client_secret_basic`); `client_id` to a
    new random one. `person`: the named person it is registered to; `bootstrap`: the
    first start's admin client. Raises SubjectTaken when `client_id` is a user's subject or another
    client's id (ASCII case ignored; RFC 9700 §4.15, `storage.subjects`)."""
    method = token_endpoint_auth_method or (PUBLIC_METHOD if public else "client_secret_basic")
    client_id = client_id or new_client_id()
    claim_subject(session, client_id)
    secret = None if method in (PUBLIC_METHOD, KEY_METHOD) else secrets.token_urlsafe(32)
    now = utcnow()
    row = Client(
        client_id=client_id,
        name=name,
        secret_hash=hash_client_secret(secret) if secret else None,
        token_endpoint_auth_method=method,
        grant_types=list(grant_types),
        redirect_uris=list(redirect_uris),
        scope=scope,
        active=True,
        created_at=now,
        updated_at=now,
        person=person,
        bootstrap=bootstrap,
        require_pushed_authorization_requests=require_pushed_authorization_requests,
        dpop_bound_access_tokens=dpop_bound_access_tokens,
        jwks=jwks,
        jwks_uri=jwks_uri,
        resources=list(resources),
    )
    session.add(row)
    session.flush()
    return _record(row), secret


def _change(session: Session, client_id: str, *where: Any, **values: Any) -> bool:
    """UPDATE one client row with `values`, bump its `version` and notify every worker;
    True if the row (matching `where` too) was updated."""
    result = session.execute(
        update(Client)
        .where(Client.client_id == client_id, *where)
        .values(**values, version=Client.version + 1)
    )
    if not result.rowcount:
        return False
    note_client_changed(session, client_id)
    return True


def update_client(session: Session, client_id: str, changes: dict[str, Any]) -> ClientView | None:
    """Apply validated `changes` (keys from UPDATABLE). None if the client is unknown."""
    values = {key: changes[key] for key in UPDATABLE if key in changes}
    if not _change(session, client_id, updated_at=utcnow(), **values):
        return None
    return get_client_view(session, client_id)


def set_client_active(session: Session, client_id: str, active: bool) -> bool:
    """Activate or deactivate a client; True if it exists."""
    return update_client(session, client_id, {"active": active}) is not None


def rotate_client_secret(session: Session, client_id: str) -> str | None:
    """Give a confidential client a new secret (≥ 256 bits; its hash replaces the old);
    the new secret, to show once, or None if the client is unknown."""
    secret = secrets.token_urlsafe(32)
    hashed = hash_client_secret(secret)
    return secret if _change(session, client_id, secret_hash=hashed, updated_at=utcnow()) else None


def upgrade_secret_hash(session: Session, client_id: str, old_hash: str, new_hash: str) -> bool:
    """Replace a legacy argon2id secret hash by its `sha256$` form after a successful
    verification: one UPDATE guarded by the old value, so a rotation that happened
    meanwhile is never overwritten. `updated_at` is kept (the secret did not change);
    `version` is bumped and other workers notified, so they drop the argon2 hash too.
    True if the row was updated."""
    return _change(session, client_id, Client.secret_hash == old_hash, secret_hash=new_hash)


def lock_active_admin_clients(session: Session) -> list[str]:
    """Ids of the active clients whose scope includes `admin`, in registration order.

    The rows are locked until the transaction ends, so two transactions each removing
    one of the last two admin clients run one after the other and the second sees the
    first's change: `SELECT … FOR UPDATE` on PostgreSQL; on SQLite, whose driver reads
    outside a write transaction, a no-op UPDATE of those rows first takes the database's
    write lock (a concurrent caller waits for the commit, up to the busy timeout).
    """
    admin_rows = (Client.active.is_(True), Client.scope.contains(ADMIN_SCOPE))
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(Client).where(*admin_rows).values(active=Client.active))
    rows = session.execute(
        select(Client.client_id, Client.scope)
        .where(*admin_rows)
        .order_by(Client.id)
        .with_for_update()
    )
    return [client_id for client_id, scope in rows if ADMIN_SCOPE in scope.split()]


def delete_client(session: Session, client_id: str) -> bool:
    """Delete a client, its consents (cascade) and its pending authorization codes.
    True if it existed (then every worker is notified). Revoke its tokens first
    (`storage.revocation`); a token written concurrently by a request that read the client
    before this commits reads as inactive at introspection (no client row)."""
    session.execute(delete(AuthorizationCode).where(AuthorizationCode.client_id == client_id))
    if not session.execute(delete(Client).where(Client.client_id == client_id)).rowcount:
        return False
    note_client_changed(session, client_id)
    return True
