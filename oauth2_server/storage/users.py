"""Resource owners (users) and their remembered consents."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from oauth2_server.crypto.hashing import hash_secret
from oauth2_server.db.models import Consent, User
from oauth2_server.storage import utcnow
from oauth2_server.storage.subjects import IDENTIFIER, SubjectTaken, claim_subject


class UserRegistrationError(ValueError):
    """User data is invalid or the username is taken; the message names the field."""


@dataclass(frozen=True)
class UserRecord:
    """A user as the OAuth layer sees it; `subject` is the token `sub`."""

    id: int
    subject: str
    username: str
    password_hash: str = field(repr=False)
    active: bool


def _record(row: User) -> UserRecord:
    return UserRecord(row.id, row.subject, row.username, row.password_hash, row.active)


def create_user(
    session: Session, username: str, password: str, subject: str | None = None
) -> UserRecord:
    """Create a user with an argon2id password hash and `subject` (a new UUID when None).
    Raises UserRegistrationError, also when the subject is malformed or taken by a user
    or a client's client_id (RFC 9700 §4.15, `storage.subjects`)."""
    if subject is not None and not IDENTIFIER.fullmatch(subject):
        raise UserRegistrationError("subject may use only A-Z a-z 0-9 . _ ~ - (1-64)")
    if not username.strip():
        raise UserRegistrationError("username must not be empty")
    if len(password) < 8:
        raise UserRegistrationError("password must be at least 8 characters")
    if session.scalars(select(User.id).where(User.username == username)).first():
        raise UserRegistrationError(f"username {username!r} is taken")
    subject = subject or str(uuid.uuid4())
    try:
        claim_subject(session, subject)
    except SubjectTaken as taken:
        raise UserRegistrationError(str(taken)) from None
    row = User(
        subject=subject,
        username=username,
        password_hash=hash_secret(password),
        active=True,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return _record(row)


def get_user_by_username(session: Session, username: str) -> UserRecord | None:
    """The user with this username, or None."""
    row = session.scalars(select(User).where(User.username == username)).first()
    return _record(row) if row else None


def get_user(session: Session, user_id: int) -> UserRecord | None:
    """The user with this id, or None."""
    row = session.get(User, user_id)
    return _record(row) if row else None


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
