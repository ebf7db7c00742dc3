"""User rows (`oauth2_users`, resource owners) and their remembered consents.

The rules a user must follow are `registry.users`; this module reads and writes rows.
Password hashes (argon2id, `crypto.hashing.hash_secret`) arrive already computed, off
the event loop in the caller, and never leave through `UserView`, what admins see.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from oauth2_server.db.models import AuthorizationCode, Consent, User
from oauth2_server.storage import utcnow
from oauth2_server.storage.subjects import claim_subject


@dataclass(frozen=True)
class UserRecord:
    """A user as the OAuth layer sees it; `subject` is the token `sub`."""

    id: int
    subject: str
    username: str
    password_hash: str = field(repr=False)
    active: bool


@dataclass(frozen=True)
class UserView:
    """A user as the admin API shows it (no password hash). `subject` is the token
    `sub` and the user's id in admin URLs."""

    id: int
    subject: str
    username: str
    active: bool
    created_at: datetime


_RECORD_COLUMNS = (User.id, User.subject, User.username, User.password_hash, User.active)
_VIEW_COLUMNS = (User.id, User.subject, User.username, User.active, User.created_at)


def insert_user(
    session: Session,
    username: str,
    password_hash: str,
    *,
    active: bool = True,
    subject: str | None = None,
) -> UserRecord:
    """Insert a user whose data the caller validated (`registry.users`), with `subject`
    or a new random one (UUID) when None.

    Raises SubjectTaken when the subject is a client's client_id or another user's
    subject (ASCII case ignored; RFC 9700 §4.15, `storage.subjects`)."""
    subject = subject or str(uuid.uuid4())
    claim_subject(session, subject)
    row = User(
        subject=subject,
        username=username,
        password_hash=password_hash,
        active=active,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return UserRecord(row.id, row.subject, row.username, row.password_hash, row.active)


def get_user_by_username(session: Session, username: str) -> UserRecord | None:
    """The user with this username, or None."""
    row = session.execute(select(*_RECORD_COLUMNS).where(User.username == username)).first()
    return UserRecord(*row) if row else None


def get_user(session: Session, user_id: int) -> UserRecord | None:
    """The user with this id, or None."""
    row = session.execute(select(*_RECORD_COLUMNS).where(User.id == user_id)).first()
    return UserRecord(*row) if row else None


def get_user_view(session: Session, subject: str) -> UserView | None:
    """The admin view of the user with this subject, or None."""
    row = session.execute(select(*_VIEW_COLUMNS).where(User.subject == subject)).first()
    return UserView(*row) if row else None


def list_users(session: Session, after_id: int | None, limit: int) -> list[UserView]:
    """Up to `limit` users in creation order after row id `after_id`."""
    stmt = select(*_VIEW_COLUMNS).order_by(User.id).limit(limit)
    if after_id is not None:
        stmt = stmt.where(User.id > after_id)
    return [UserView(*row) for row in session.execute(stmt)]


def username_taken(session: Session, username: str, except_subject: str | None = None) -> bool:
    """True if another user has this username (case-insensitive). The exact comparison
    is needed too: SQLite's lower() folds ASCII only, so `lower('Ò') != 'Ò'.lower()` there,
    and an exact duplicate would otherwise reach the unique index."""
    stmt = select(User.id).where(
        or_(User.username == username, func.lower(User.username) == username.lower())
    )
    if except_subject is not None:
        stmt = stmt.where(User.subject != except_subject)
    return session.scalars(stmt.limit(1)).first() is not None


def update_user(session: Session, subject: str, changes: dict[str, Any]) -> UserView | None:
    """Apply validated `changes` (`username`, `active`, `password_hash`); None if the user
    is unknown."""
    values = {k: changes[k] for k in ("username", "active", "password_hash") if k in changes}
    if values:
        session.execute(update(User).where(User.subject == subject).values(**values))
    return get_user_view(session, subject)


def delete_pending_codes(session: Session, user_id: int, client_id: str | None = None) -> int:
    """Delete a user's unredeemed authorization codes (only those issued to `client_id`
    when given), so none can mint new tokens. Returns how many."""
    where = [AuthorizationCode.user_id == user_id, AuthorizationCode.consumed_at.is_(None)]
    if client_id is not None:
        where.append(AuthorizationCode.client_id == client_id)
    return session.execute(delete(AuthorizationCode).where(*where)).rowcount


def forget_consent(session: Session, user_id: int, client_id: str) -> bool:
    """Delete the user's remembered consent for the client (`remember_consent`), so the
    consent page asks again. True if there was one."""
    result = session.execute(
        delete(Consent).where(Consent.user_id == user_id, Consent.client_id == client_id)
    )
    return bool(result.rowcount)


def consented_scopes(session: Session, user_id: int, client_id: str) -> frozenset[str]:
    """Scopes this user already approved for this client (empty if never)."""
    scope = session.scalars(
        select(Consent.scope).where(Consent.user_id == user_id, Consent.client_id == client_id)
    ).first()
    return frozenset(scope.split()) if scope else frozenset()


def remember_consent(session: Session, user_id: int, client_id: str, scopes: set[str]) -> None:
    """Add scopes to the user's remembered consent for the client."""
    row = session.scalars(
        select(Consent).where(Consent.user_id == user_id, Consent.client_id == client_id)
    ).first()
    if row is None:
        session.add(
            Consent(
                user_id=user_id,
                client_id=client_id,
                scope=" ".join(sorted(scopes)),
                granted_at=utcnow(),
            )
        )
    else:
        row.scope = " ".join(sorted(set(row.scope.split()) | scopes))
        row.granted_at = utcnow()
    session.flush()
