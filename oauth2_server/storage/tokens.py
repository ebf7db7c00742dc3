"""Authorization codes, access-token rows and refresh-token families.

Flows call these by what they do (`consume_authorization_code`, `redeem_refresh_token`,
`revoke_family`); each security-relevant change is one compare-and-set statement, so
two concurrent callers cannot both win, across processes.

A refresh token family (one grant, RFC 9700 §4.14.2) is a chain of rows linked by
`parent_id`; it has at most one *current* token (not rotated, not revoked, unexpired).
Every row that stops being current gets `rotated_at`: by its own use (rotation), or
superseded by a grace use of its parent (`redeem_refresh_token`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from oauth2_server.db.models import AccessToken, AuthorizationCode, RefreshToken, User


@dataclass(frozen=True)
class NewAuthorizationCode:
    """An authorization code as issued (RFC 6749 §4.1.2) with its PKCE challenge
    (RFC 7636 §4.3): stored by its SHA-256 digest `code_hash`, never the code.
    `expires_at` is UTC. `resources`: the resource indicators granted (RFC 8707 §2.2;
    None: none requested)."""

    code_hash: str
    client_id: str
    user_id: int
    redirect_uri: str | None
    scope: str
    code_challenge: str
    code_challenge_method: str
    expires_at: datetime
    resources: list[str] | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class CodeRecord(NewAuthorizationCode):
    """A stored authorization code: as issued, plus its row id and redemption state
    (`consumed_at` UTC, and the token family it started)."""

    id: int
    consumed_at: datetime | None
    family_id: str | None


def _columns(table: Any, record: type) -> tuple[Any, ...]:
    """`table`'s columns named by the fields of the dataclass `record`, in field order
    (so `record(*row)` reads a row selected with them)."""
    return tuple(table.c[name] for name in record.__dataclass_fields__)


def _values(record: Any) -> dict[str, Any]:
    """The column values of a row dataclass, by field name, as an INSERT binds them."""
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


_CODE_COLUMNS = _columns(AuthorizationCode.__table__, CodeRecord)


def save_authorization_code(session: Session, code: NewAuthorizationCode, now: datetime) -> None:
    """Store a new code by its SHA-256 digest, created at `now` (UTC)."""
    session.execute(insert(AuthorizationCode).values(created_at=now, **_values(code)))


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
    return CodeRecord(**row._mapping) if row else None


def find_authorization_code(session: Session, code_hash: str) -> CodeRecord | None:
    """The code row by digest, consumed or not."""
    row = session.execute(
        select(*_CODE_COLUMNS).where(AuthorizationCode.code_hash == code_hash)
    ).first()
    return CodeRecord(**row._mapping) if row else None


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


# The access-token row's columns, defined once (the fields of `AccessTokenRecord`): every
# read of the row selects these, every write binds `access_token_values`.
ACCESS_TOKEN_COLUMNS = _columns(AccessToken.__table__, AccessTokenRecord)
INSERT_ACCESS_TOKEN = AccessToken.__table__.insert()
_SELECT_ACCESS = select(*ACCESS_TOKEN_COLUMNS).where(AccessToken.jti == bindparam("jti"))


def access_token_values(record: AccessTokenRecord) -> dict[str, Any]:
    """The access-token row's column values, as every writer binds them (the session's
    insert and the PostgreSQL hot path's coalesced statement)."""
    return _values(record)


def insert_access_token(session: Session, record: AccessTokenRecord) -> None:
    """Store the row for a newly issued access token, in the session's transaction."""
    session.execute(INSERT_ACCESS_TOKEN, access_token_values(record))


def get_access_token(session: Session, jti: str) -> AccessTokenRecord | None:
    """The access-token row by `jti`, or None."""
    row = session.execute(_SELECT_ACCESS, {"jti": jti}).first()
    return AccessTokenRecord(*row) if row else None


def revoke_access_token(session: Session, jti: str, now: datetime) -> bool:
    """Revoke one access token; True if this call revoked it."""
    return bool(revoke_where(session, AccessToken, now, AccessToken.jti == jti))


# How audit rows name an opaque token (authorization code, refresh token): the first hex
# digits of its SHA-256 (never the token).
OPAQUE_ID_CHARS = 16


def opaque_token_id(token_hash: str) -> str:
    """The audit trail's `token_id` of the code or refresh token whose SHA-256 hex is
    `token_hash`."""
    return token_hash[:OPAQUE_ID_CHARS]


@dataclass(frozen=True)
class RevokedToken:
    """A token one revocation changed: `kind` `access_token` or `refresh_token`,
    `token_id` as the audit trail names it (the `jti`, or `opaque_token_id`), and its
    client, family (None for client_credentials and exchange tokens), user row id and
    `subject` (the token's `sub`: its user's, or the client's for client_credentials;
    None when the user row is gone), which its `token_revoked` row names (issue #11)."""

    kind: str
    token_id: str
    client_id: str
    family_id: str | None
    user_id: int | None
    subject: str | None = None


def revoke_where(session: Session, model: Any, now: datetime, *where: Any) -> list[RevokedToken]:
    """Set `revoked_at` to `now` (UTC) on `model`'s rows (`AccessToken` or
    `RefreshToken`) matching `where` that are not revoked yet, in one UPDATE … RETURNING;
    returns the tokens this call revoked (a concurrent revocation never reports a token
    twice). Token rows are never loaded as ORM objects, so the session has nothing to
    synchronize."""
    access = model is AccessToken
    key = AccessToken.jti if access else RefreshToken.token_hash
    # an access token's row has its `sub`; a refresh token's, its user's row id
    owner = AccessToken.subject if access else RefreshToken.user_id
    result = session.execute(
        update(model)
        .where(*where, model.revoked_at.is_(None))
        .values(revoked_at=now)
        .returning(key, model.client_id, model.family_id, model.user_id, owner.label("owner"))
        .execution_options(synchronize_session=False)
    ).all()
    kind = "access_token" if access else "refresh_token"
    subjects = {} if access else user_subjects(session, [row.owner for row in result])
    return [
        RevokedToken(
            kind,
            token if access else opaque_token_id(token),
            client,
            family,
            user,
            owner if access else subjects.get(owner),
        )
        for token, client, family, user, owner in result
    ]


def user_subjects(session: Session, user_ids: Iterable[int | None]) -> dict[int, str]:
    """The `sub` of each user row id given (one query; ids of deleted users are absent),
    so audit rows about a user's tokens name the user (issue #11)."""
    ids = {user_id for user_id in user_ids if user_id is not None}
    if not ids:
        return {}
    rows = session.execute(select(User.id, User.subject).where(User.id.in_(ids)))
    return {user_id: subject for user_id, subject in rows}


@dataclass(frozen=True)
class NewRefreshToken:
    """A refresh token as issued (RFC 6749 §6) in its family (RFC 9700 §4.14.2): stored
    by its SHA-256 digest `token_hash`, never the token; `parent_id` is the row it
    rotated (None for the family's first). `family_expires_at` is the family's absolute
    end (None: no limit). `dpop_jkt`: the DPoP key a public client's token is bound to
    (RFC 9449 §5; None: not bound). `resources`: the resource indicators granted to the
    family (RFC 8707 §2.2; None: none requested). Times are UTC."""

    token_hash: str
    family_id: str
    parent_id: int | None
    client_id: str
    user_id: int
    scope: str
    issued_at: datetime
    expires_at: datetime
    family_expires_at: datetime | None = None
    dpop_jkt: str | None = None
    resources: list[str] | None = None


@dataclass(frozen=True, kw_only=True)
class RefreshTokenRecord(NewRefreshToken):
    """A stored refresh token: as issued, plus its row id and whether it was rotated or
    revoked (UTC)."""

    id: int
    rotated_at: datetime | None
    revoked_at: datetime | None


_REFRESH_COLUMNS = _columns(RefreshToken.__table__, RefreshTokenRecord)


def _refresh_record(row: Any) -> RefreshTokenRecord | None:
    """The record of a row selected with `_REFRESH_COLUMNS`, or None."""
    return RefreshTokenRecord(**row._mapping) if row else None


def insert_refresh_token(session: Session, token: NewRefreshToken) -> None:
    """Store a new refresh token by its SHA-256 digest. Its `expires_at` is capped at
    `family_expires_at`, the family's absolute end (None: no limit), UTC."""
    values = _values(token)
    if token.family_expires_at is not None:
        values["expires_at"] = min(token.expires_at, token.family_expires_at)
    session.execute(insert(RefreshToken).values(**values))


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
    return _refresh_record(row)


RedemptionOutcome = Literal["rotated", "grace", "reuse", "invalid"]

# A grace use that loses its compare-and-set to another grace use tries again; every
# loss means another use succeeded, so this only bounds a pathological pile-up.
GRACE_ATTEMPTS = 64


@dataclass(frozen=True)
class RefreshRedemption:
    """What presenting a refresh token did (RFC 6749 §6; RFC 9700 §4.14.2).

    - `rotated`: `token` was current and is now rotated by this call; issue its child.
    - `grace`: `token` was rotated at most `grace` seconds ago and is the parent of the
      family's current token; that current token (`superseded`) is now rotated by this
      call; issue a new child of `token`. The family keeps exactly one current token.
    - `reuse`: `token` was rotated and no grace applies: the caller revokes the family.
    - `invalid`: unknown, another client's, expired or revoked; nothing changed.
    """

    outcome: RedemptionOutcome
    token: RefreshTokenRecord | None = None
    superseded: RefreshTokenRecord | None = None


def redeem_refresh_token(
    session: Session, token_hash: str, client_id: str, now: datetime, grace: float = 0
) -> RefreshRedemption:
    """Use a presented refresh token of `client_id`: the whole rotation rule in one place.

    `grace` (seconds, `OAUTH2_REFRESH_REUSE_GRACE`) lets a repeat use of the most recently
    rotated token (the parent of the current one, never an older ancestor) by the same
    client succeed: it supersedes the current token instead of revoking the family, so a
    retry after a lost answer, or a duplicate request, does not sign the user out. No
    grace for another client's token, or for a revoked, expired or ended family.

    Race-free across processes: each change is one compare-and-set `UPDATE … RETURNING`
    holding one row lock at a time (the presented row, then the current row), so two
    concurrent uses never both rotate the same row and no lock cycle can form. A grace
    use that loses to another grace use retries on the new current token (bounded by
    `GRACE_ATTEMPTS`; after that it is `invalid`, nothing changed). `now` is UTC.
    """
    rotated = rotate_refresh_token(session, token_hash, client_id, now)
    if rotated is not None:
        return RefreshRedemption("rotated", rotated)
    stored = find_refresh_token(session, token_hash)
    if stored is None or stored.client_id != client_id or stored.rotated_at is None:
        return RefreshRedemption("invalid", stored)
    if not _in_grace(stored, now, grace):
        return RefreshRedemption("reuse", stored)
    for _ in range(GRACE_ATTEMPTS):
        superseded = _supersede_current_child(session, stored, now)
        if superseded is not None:
            return RefreshRedemption("grace", stored, superseded)
        if not _has_current_child(session, stored, now):
            return RefreshRedemption("reuse", stored)  # an older ancestor, or none is live
    return RefreshRedemption("invalid", stored)


def _in_grace(token: RefreshTokenRecord, now: datetime, grace: float) -> bool:
    """True if a repeat use of this rotated token may get grace: within `grace` seconds
    of its rotation, the token itself unrevoked and unexpired, its family not ended."""
    return (
        grace > 0
        and token.rotated_at is not None
        and token.revoked_at is None
        and token.expires_at > now
        and (token.family_expires_at is None or token.family_expires_at > now)
        and (now - token.rotated_at).total_seconds() <= grace
    )


def _current_child(parent: RefreshTokenRecord, now: datetime) -> tuple[Any, ...]:
    """The conditions of `parent`'s current child (the family's current token)."""
    return (
        RefreshToken.family_id == parent.family_id,
        RefreshToken.parent_id == parent.id,
        RefreshToken.rotated_at.is_(None),
        RefreshToken.revoked_at.is_(None),
        RefreshToken.expires_at > now,
    )


def _supersede_current_child(
    session: Session, parent: RefreshTokenRecord, now: datetime
) -> RefreshTokenRecord | None:
    """Compare-and-set: mark the family's current token rotated if it is `parent`'s child."""
    stmt = (
        update(RefreshToken)
        .where(*_current_child(parent, now))
        .values(rotated_at=now)
        .returning(*_REFRESH_COLUMNS)
    )
    row = session.execute(stmt).first()
    return _refresh_record(row)


def _has_current_child(session: Session, parent: RefreshTokenRecord, now: datetime) -> bool:
    """True if `parent` has a current child (committed by a concurrent grace use)."""
    found = session.execute(select(RefreshToken.id).where(*_current_child(parent, now)).limit(1))
    return found.first() is not None


def find_refresh_token(session: Session, token_hash: str) -> RefreshTokenRecord | None:
    """The refresh-token row by digest, in any state."""
    row = session.execute(
        select(*_REFRESH_COLUMNS).where(RefreshToken.token_hash == token_hash)
    ).first()
    return _refresh_record(row)


def revoke_family(session: Session, family_id: str, now: datetime) -> list[RevokedToken]:
    """Revoke every refresh and access token of one grant. Returns the tokens newly
    revoked (refresh tokens first)."""
    return [
        token
        for model in (RefreshToken, AccessToken)
        for token in revoke_where(session, model, now, model.family_id == family_id)
    ]
