"""A token presented to introspection (RFC 7662) or revocation (RFC 7009), as stored.

A presented string is looked up by what it is: a JWT is verified (signature, issuer,
expiry, `typ`) and its `jti` row read; anything else is treated as a refresh token and
looked up by SHA-256. `token_type_hint` orders nothing here: both lookups are cheap and
unambiguous (a refresh token never parses as a JWT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749 import TokenMixin
from sqlalchemy.orm import Session

from oauth2_server.crypto.hashing import token_digest
from oauth2_server.oauth.tokens import AccessTokenCodec
from oauth2_server.storage import tokens as token_storage
from oauth2_server.storage import utcnow
from oauth2_server.storage.tokens import AccessTokenRecord, RefreshTokenRecord, opaque_token_id


@dataclass(frozen=True)
class PresentedToken(TokenMixin):
    """A token found in storage: an access token (with its verified JWT claims) or a
    refresh token. `client_active` is False when the token's client is deactivated or
    deleted (set where introspection reads it; True elsewhere)."""

    token_type: str  # "access_token" | "refresh_token"
    token_id: str  # jti, or digest prefix for refresh tokens
    access: AccessTokenRecord | None = None
    refresh: RefreshTokenRecord | None = None
    claims: dict[str, Any] | None = None
    client_active: bool = True
    user_subject: str | None = None  # a refresh token's user's `sub` (find_presented_token)

    @property
    def subject(self) -> str | None:
        """The token's `sub` as its audit rows name it (issue #11): the access token's
        claim or row, or the refresh token's user (None when that user is gone)."""
        if self.claims is not None:
            return self.claims.get("sub")
        return self.access.subject if self.access is not None else self.user_subject

    @property
    def client_id(self) -> str:
        row = self.access or self.refresh
        assert row is not None
        return row.client_id

    def check_client(self, client: Any) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        row = self.access or self.refresh
        assert row is not None
        return row.scope

    def is_expired(self) -> bool:
        row = self.access or self.refresh
        assert row is not None
        return row.expires_at <= utcnow()

    def is_revoked(self) -> bool:
        if self.access is not None:
            return self.access.revoked_at is not None
        assert self.refresh is not None
        return self.refresh.revoked_at is not None or self.refresh.rotated_at is not None


def find_presented_token(db: Session, codec: AccessTokenCodec, token: str) -> PresentedToken | None:
    """The stored token behind a presented string, or None if it is not ours."""
    if token.count(".") == 2:
        claims = codec.decode(token)
        if claims is None:
            return None
        row = token_storage.get_access_token(db, claims["jti"])
        if row is None:
            return None
        return PresentedToken("access_token", row.jti, access=row, claims=claims)
    digest = token_digest(token)
    refresh = token_storage.find_refresh_token(db, digest)
    if refresh is None:
        return None
    owner = token_storage.user_subjects(db, [refresh.user_id]).get(refresh.user_id)
    return PresentedToken(
        "refresh_token", opaque_token_id(digest), refresh=refresh, user_subject=owner
    )
