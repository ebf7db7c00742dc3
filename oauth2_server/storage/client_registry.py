"""Changing registered clients (the admin API): list, register, update, rotate, delete.

Secrets arrive here already hashed (`sha256$…`, `crypto.hashing.hash_client_secret`).
No function returns `secret_hash`: `ClientView` is what admins see.

Every change of a client row goes through this module: it adds one to the row's `version`
in the same UPDATE and queues a `NOTIFY` in the same transaction
(`storage.client_notify`), so no worker acts on the old row once the change has committed
(DESIGN.md invariant 9; README "Client changes take effect at once").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from oauth2_server.db.models import AuthorizationCode, Client
from oauth2_server.storage import utcnow
from oauth2_server.storage.client_notify import note_client_changed
from oauth2_server.storage.subjects import claim_subject


@dataclass(frozen=True)
class ClientView:
    """A client as the admin API shows it: everything but the secret hash."""

    client_id: str
    name: str
    token_endpoint_auth_method: str
    grant_types: list[str]
    redirect_uris: list[str]
    scope: str
    active: bool
    created_at: datetime
    updated_at: datetime


_COLUMNS = (
    Client.client_id,
    Client.name,
    Client.token_endpoint_auth_method,
    Client.grant_types,
    Client.redirect_uris,
    Client.scope,
    Client.active,
    Client.created_at,
    Client.updated_at,
)


def _view(row: Any) -> ClientView:
    return ClientView(*row)


def get_client_view(session: Session, client_id: str) -> ClientView | None:
    """The client with this id, or None."""
    row = session.execute(select(*_COLUMNS).where(Client.client_id == client_id)).first()
    return _view(row) if row else None


def list_clients(
    session: Session, after_id: int | None, limit: int
) -> list[tuple[int, ClientView]]:
    """Up to `limit` clients in registration order after row id `after_id`, as
    (row id, view) pairs (the row id is the keyset position)."""
    stmt = select(Client.id, *_COLUMNS).order_by(Client.id).limit(limit)
    if after_id is not None:
        stmt = stmt.where(Client.id > after_id)
    return [(row[0], _view(row[1:])) for row in session.execute(stmt)]


def client_name_taken(session: Session, name: str, except_client_id: str | None = None) -> bool:
    """True if another client has this name (case-insensitive)."""
    stmt = select(Client.id).where(func.lower(Client.name) == name.lower())
    if except_client_id is not None:
        stmt = stmt.where(Client.client_id != except_client_id)
    return session.scalars(stmt.limit(1)).first() is not None


def client_id_taken(session: Session, client_id: str) -> bool:
    return (
        session.scalars(select(Client.id).where(Client.client_id == client_id)).first() is not None
    )


def register_client(
    session: Session,
    *,
    client_id: str,
    name: str,
    token_endpoint_auth_method: str,
    grant_types: Sequence[str],
    redirect_uris: Sequence[str],
    scope: str,
    secret_hash: str | None,
) -> ClientView:
    """Insert a client whose metadata the caller validated. Returns its view.

    Raises SubjectTaken when `client_id` is a user's subject or another client's id
    (ASCII case ignored; RFC 9700 §4.15, `storage.subjects`)."""
    claim_subject(session, client_id)
    now = utcnow()
    session.execute(
        insert(Client).values(
            client_id=client_id,
            name=name,
            secret_hash=secret_hash,
            token_endpoint_auth_method=token_endpoint_auth_method,
            grant_types=list(grant_types),
            redirect_uris=list(redirect_uris),
            scope=scope,
            active=True,
            created_at=now,
            updated_at=now,
        )
    )
    view = get_client_view(session, client_id)
    assert view is not None
    return view


UPDATABLE = ("name", "grant_types", "redirect_uris", "scope", "active")


def update_client(session: Session, client_id: str, changes: dict[str, Any]) -> ClientView | None:
    """Apply validated `changes` (keys from UPDATABLE), bump `version` and notify. None if
    the client is unknown."""
    values = {key: changes[key] for key in UPDATABLE if key in changes}
    result = session.execute(
        update(Client)
        .where(Client.client_id == client_id)
        .values(**values, updated_at=utcnow(), version=Client.version + 1)
    )
    if not result.rowcount:
        return None
    note_client_changed(session, client_id)
    return get_client_view(session, client_id)


def set_client_secret_hash(session: Session, client_id: str, secret_hash: str) -> bool:
    """Replace a confidential client's secret hash (bumping `version`, notifying); True if
    the client exists."""
    result = session.execute(
        update(Client)
        .where(Client.client_id == client_id)
        .values(secret_hash=secret_hash, updated_at=utcnow(), version=Client.version + 1)
    )
    if not result.rowcount:
        return False
    note_client_changed(session, client_id)
    return True


def upgrade_secret_hash(session: Session, client_id: str, old_hash: str, new_hash: str) -> bool:
    """Replace a legacy argon2id secret hash by its `sha256$` form after a successful
    verification: one UPDATE guarded by the old value, so a rotation that happened
    meanwhile is never overwritten. `updated_at` is kept (the secret did not change);
    `version` is bumped and other workers notified, so they drop the argon2 hash too.
    True if the row was updated."""
    result = session.execute(
        update(Client)
        .where(Client.client_id == client_id, Client.secret_hash == old_hash)
        .values(secret_hash=new_hash, version=Client.version + 1)
    )
    if not result.rowcount:
        return False
    note_client_changed(session, client_id)
    return True


ADMIN_SCOPE = "admin"


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
