"""Listing live tokens and revoking them in bulk (the admin API).

A revocation sets `revoked_at` with one UPDATE per table, guarded by `revoked_at IS
NULL`, so the counts returned are tokens this call revoked, and two concurrent
revocations never count a token twice. Introspection reads these rows, so a revoked
token is inactive from the commit on (DESIGN.md; RFC 7662 §2.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, select, tuple_
from sqlalchemy.orm import Session

from oauth2_server.db.models import AccessToken, RefreshToken, User
from oauth2_server.storage.tokens import RevokedToken, revoke_where


@dataclass(frozen=True)
class TokenFilter:
    """Which tokens: of a client, of a user (row id), or of clients (branch scope)."""

    client_ids: tuple[str, ...] | None = None
    user_id: int | None = None


def _where(model: Any, f: TokenFilter) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if f.client_ids is not None:
        where.append(model.client_id.in_(f.client_ids))
    if f.user_id is not None:
        where.append(model.user_id == f.user_id)
    return where


def revoke_tokens(session: Session, f: TokenFilter, now: datetime) -> list[RevokedToken]:
    """Revoke every unrevoked access and refresh token matching `f` (expired ones too,
    so nothing can be revived). Returns the tokens newly revoked."""
    models = (AccessToken, RefreshToken)
    return [t for model in models for t in revoke_where(session, model, now, *_where(model, f))]


def family_exists(session: Session, family_id: str) -> bool:
    """True if any refresh or access token belongs to this family (grant)."""
    for model in (RefreshToken, AccessToken):
        if session.scalars(
            select(model.family_id).where(model.family_id == family_id).limit(1)
        ).first():
            return True
    return False


def list_live_access_tokens(
    session: Session, f: TokenFilter, now: datetime, after: tuple[datetime, str] | None, limit: int
) -> list[dict[str, Any]]:
    """Unrevoked, unexpired access tokens matching `f`, oldest first, after the keyset
    position (`issued_at`, `jti`)."""
    stmt = select(
        AccessToken.jti,
        AccessToken.client_id,
        AccessToken.subject,
        AccessToken.scope,
        AccessToken.grant_type,
        AccessToken.family_id,
        AccessToken.issued_at,
        AccessToken.expires_at,
    ).where(*_where(AccessToken, f), AccessToken.revoked_at.is_(None), AccessToken.expires_at > now)
    if after is not None:
        stmt = stmt.where(tuple_(AccessToken.issued_at, AccessToken.jti) > tuple_(*after))
    stmt = stmt.order_by(AccessToken.issued_at, AccessToken.jti).limit(limit)
    return [dict(row._mapping) for row in session.execute(stmt)]


def list_live_refresh_tokens(
    session: Session, f: TokenFilter, now: datetime, after: int | None, limit: int
) -> list[dict[str, Any]]:
    """The live refresh token of each grant matching `f` (not rotated, revoked or
    expired), oldest first after row id `after`. No digest is returned."""
    stmt = (
        select(
            RefreshToken.id,
            RefreshToken.family_id,
            RefreshToken.client_id,
            User.subject,
            RefreshToken.scope,
            RefreshToken.issued_at,
            RefreshToken.expires_at,
        )
        .join(User, User.id == RefreshToken.user_id, isouter=True)
        .where(
            *_where(RefreshToken, f),
            RefreshToken.revoked_at.is_(None),
            RefreshToken.rotated_at.is_(None),
            RefreshToken.expires_at > now,
        )
    )
    if after is not None:
        stmt = stmt.where(RefreshToken.id > after)
    stmt = stmt.order_by(RefreshToken.id).limit(limit)
    return [dict(row._mapping) for row in session.execute(stmt)]
