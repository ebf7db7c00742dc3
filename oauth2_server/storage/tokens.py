"""Authorization codes, access-token rows and refresh-token families.

Flows call these by what they do (`consume_authorization_code`, `rotate_refresh_token`,
`revoke_family`); each security-relevant change is one compare-and-set statement, so
two concurrent callers cannot both win, across processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from oauth2_server.db.models import AccessToken, AuthorizationCode, RefreshToken


@dataclass(frozen=True)
class CodeRecord:
    """A stored authorization code (RFC 6749 §4.1.2) with its PKCE challenge (RFC 7636)."""

    id: int
    client_id: str
    user_id: int
    redirect_uri: str | None
    scope: str
    code_challenge: str
    code_challenge_method: str
    expires_at: datetime
    consumed_at: datetime | None
    family_id: str | None


_CODE_COLUMNS = (
    AuthorizationCode.id,
    AuthorizationCode.client_id,
    AuthorizationCode.user_id,
    AuthorizationCode.redirect_uri,
    AuthorizationCode.scope,
    AuthorizationCode.code_challenge,
    AuthorizationCode.code_challenge_method,
    AuthorizationCode.expires_at,
    AuthorizationCode.consumed_at,
    AuthorizationCode.family_id,
)


def save_authorization_code(
    session: Session,
    *,
    code_hash: str,
    client_id: str,
    user_id: int,
    redirect_uri: str | None,
    scope: str,
    code_challenge: str,
    code_challenge_method: str,
    now: datetime,
    expires_at: datetime,
) -> None:
    """Store a new code by its SHA-256 digest."""
    session.execute(
        insert(AuthorizationCode).values(
            code_hash=code_hash,
            client_id=client_id,
            user_id=user_id,
            redirect_uri=redirect_uri,
            scope=scope,
            code_challenge=code_challenge,
            code_challenge_method=code_challenge_method,
            created_at=now,
            expires_at=expires_at,
        )
    )


def consume_authorization_code(
    session: Session, code_hash: str, family_id: str, now: datetime
) -> CodeRecord | None:
    """Mark an unexpired, unused code consumed and tie it to the token family it starts.

    Compare-and-set: only one caller gets the row back. None if the code is unknown,
    expired or already consumed (use `find_authorization_code` to tell replay apart).
    """
    stmt = (
        update(AuthorizationCode)
        .where(
            AuthorizationCode.code_hash == code_hash,
            AuthorizationCode.consumed_at.is_(None),
            AuthorizationCode.expires_at > now,
        )
        .values(consumed_at=now, family_id=family_id)
        .returning(*_CODE_COLUMNS)
    )
    row = session.execute(stmt).first()
    return CodeRecord(*row) if row else None


def find_authorization_code(session: Session, code_hash: str) -> CodeRecord | None:
    """The code row by digest, consumed or not."""
    row = session.execute(
        select(*_CODE_COLUMNS).where(AuthorizationCode.code_hash == code_hash)
    ).first()
    return CodeRecord(*row) if row else None


@dataclass(frozen=True)
class AccessTokenRecord:
    """The row behind a JWT access token (its `jti`)."""

    jti: str
    client_id: str
    subject: str
    user_id: int | None
    scope: str
    grant_type: str
    family_id: str | None
    issued_at: datetime
    expires_at: datetime
    revoked_at: datetime | None


_ACCESS_COLUMNS = (
    AccessToken.jti,
    AccessToken.client_id,
    AccessToken.subject,
    AccessToken.user_id,
    AccessToken.scope,
    AccessToken.grant_type,
    AccessToken.family_id,
    AccessToken.issued_at,
    AccessToken.expires_at,
    AccessToken.revoked_at,
)


# Hot-path statements are constants on the Table with bound parameters: compiled once,
# executed on the session's connection without ORM machinery.
_INSERT_ACCESS = AccessToken.__table__.insert()
_SELECT_ACCESS = select(*_ACCESS_COLUMNS).where(AccessToken.jti == bindparam("jti"))


def insert_access_token(session: Session, record: AccessTokenRecord) -> None:
    """Store the row for a newly issued access token."""
    session.connection().execute(
        _INSERT_ACCESS,
        {
            "jti": record.jti,
            "client_id": record.client_id,
            "subject": record.subject,
            "user_id": record.user_id,
            "scope": record.scope,
            "grant_type": record.grant_type,
            "family_id": record.family_id,
            "issued_at": record.issued_at,
            "expires_at": record.expires_at,
        },
    )


def get_access_token(session: Session, jti: str) -> AccessTokenRecord | None:
    """The access-token row by `jti`, or None."""
    row = session.connection().execute(_SELECT_ACCESS, {"jti": jti}).first()
    return AccessTokenRecord(*row) if row else None


def revoke_access_token(session: Session, jti: str, now: datetime) -> bool:
    """Revoke one access token; True if this call revoked it."""
    result = session.execute(
        update(AccessToken)
        .where(AccessToken.jti == jti, AccessToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return result.rowcount > 0


@dataclass(frozen=True)
class RefreshTokenRecord:
    """A refresh token row (RFC 6749 §6) in its family (RFC 9700 §4.14.2)."""

    id: int
    family_id: str
    parent_id: int | None
    client_id: str
    user_id: int
    scope: str
    issued_at: datetime
    expires_at: datetime
    rotated_at: datetime | None
    revoked_at: datetime | None
    family_expires_at: datetime | None = None


_REFRESH_COLUMNS = (
    RefreshToken.id,
    RefreshToken.family_id,
    RefreshToken.parent_id,
    RefreshToken.client_id,
    RefreshToken.user_id,
    RefreshToken.scope,
    RefreshToken.issued_at,
    RefreshToken.expires_at,
    RefreshToken.rotated_at,
    RefreshToken.revoked_at,
    RefreshToken.family_expires_at,
)


def insert_refresh_token(
    session: Session,
    *,
    token_hash: str,
    family_id: str,
    parent_id: int | None,
    client_id: str,
    user_id: int,
    scope: str,
    issued_at: datetime,
    expires_at: datetime,
    family_expires_at: datetime | None = None,
) -> None:
    """Store a new refresh token by its SHA-256 digest. Its `expires_at` is capped at
    `family_expires_at`, the family's absolute end (None: no limit), UTC."""
    if family_expires_at is not None:
        expires_at = min(expires_at, family_expires_at)
    session.execute(
        insert(RefreshToken).values(
            token_hash=token_hash,
            family_id=family_id,
            parent_id=parent_id,
            client_id=client_id,
            user_id=user_id,
            scope=scope,
            issued_at=issued_at,
            expires_at=expires_at,
            family_expires_at=family_expires_at,
        )
    )


def rotate_refresh_token(
    session: Session, token_hash: str, client_id: str, now: datetime
) -> RefreshTokenRecord | None:
    """Mark a live refresh token of this client rotated; only one concurrent caller wins.

    None if the token is unknown, another client's, expired, revoked or already rotated
    (`find_refresh_token` tells reuse apart).
    """
    stmt = (
        update(RefreshToken)
        .where(
            RefreshToken.token_hash == token_hash,
            RefreshToken.client_id == client_id,
            RefreshToken.rotated_at.is_(None),
            RefreshToken.revoked_at.is_(None),
            RefreshToken.expires_at > now,
        )
        .values(rotated_at=now)
        .returning(*_REFRESH_COLUMNS)
    )
    row = session.execute(stmt).first()
    return RefreshTokenRecord(*row) if row else None


def find_refresh_token(session: Session, token_hash: str) -> RefreshTokenRecord | None:
    """The refresh-token row by digest, in any state."""
    row = session.execute(
        select(*_REFRESH_COLUMNS).where(RefreshToken.token_hash == token_hash)
    ).first()
    return RefreshTokenRecord(*row) if row else None


def revoke_family(session: Session, family_id: str, now: datetime) -> int:
    """Revoke every refresh and access token of one grant. Returns tokens newly revoked."""
    refresh = session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    access = session.execute(
        update(AccessToken)
        .where(AccessToken.family_id == family_id, AccessToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return refresh.rowcount + access.rowcount
