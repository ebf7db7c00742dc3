"""Changing users (the admin API): list, register, update, set password.

Password hashes arrive already computed (argon2id off the event loop in the caller) and
never leave: `UserView` is what admins see.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from oauth2_server.db.models import AuthorizationCode, User
from oauth2_server.storage import utcnow
from oauth2_server.storage.subjects import claim_subject


@dataclass(frozen=True)
class UserView:
    """A user as the admin API shows it (no password hash). `subject` is the token
    `sub` and the user's id in admin URLs."""

    id: int
    subject: str
    username: str
    active: bool
    created_at: datetime


_COLUMNS = (User.id, User.subject, User.username, User.active, User.created_at)


def get_user_view(session: Session, subject: str) -> UserView | None:
    """The user with this subject, or None."""
    row = session.execute(select(*_COLUMNS).where(User.subject == subject)).first()
    return UserView(*row) if row else None


def list_users(session: Session, after_id: int | None, limit: int) -> list[UserView]:
    """Up to `limit` users in creation order after row id `after_id`."""
    stmt = select(*_COLUMNS).order_by(User.id).limit(limit)
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


def register_user(
    session: Session,
    username: str,
    password_hash: str,
    active: bool,
    subject: str | None = None,
) -> UserView:
    """Insert a user with `subject` (validated by the caller against
    `subjects.IDENTIFIER`), or a new random one (UUID) when None.

    Raises SubjectTaken when the subject is a client's client_id or another user's
    subject (ASCII case ignored; RFC 9700 §4.15, `storage.subjects`)."""
    subject = subject or str(uuid.uuid4())
    claim_subject(session, subject)
    session.execute(
        insert(User).values(
            subject=subject,
            username=username,
            password_hash=password_hash,
            active=active,
            created_at=utcnow(),
        )
    )
    view = get_user_view(session, subject)
    assert view is not None
    return view


def update_user(session: Session, subject: str, changes: dict[str, Any]) -> UserView | None:
    """Apply validated `changes` (`username`, `active`); None if the user is unknown."""
    values = {key: changes[key] for key in ("username", "active") if key in changes}
    if values:
        session.execute(update(User).where(User.subject == subject).values(**values))
    return get_user_view(session, subject)


def set_password_hash(session: Session, subject: str, password_hash: str) -> bool:
    """Replace a user's password hash; True if the user exists."""
    result = session.execute(
        update(User).where(User.subject == subject).values(password_hash=password_hash)
    )
    return result.rowcount > 0


def delete_pending_codes(session: Session, user_id: int) -> int:
    """Delete a user's unredeemed authorization codes, so none can mint new tokens."""
    return session.execute(
        delete(AuthorizationCode).where(
            AuthorizationCode.user_id == user_id, AuthorizationCode.consumed_at.is_(None)
        )
    ).rowcount
