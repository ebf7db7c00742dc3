"""Introspection (RFC 7662) and revocation (RFC 7009) endpoints over our token storage.

A presented token is looked up by what it is: a JWT is verified (signature, issuer,
expiry, `typ`) and its `jti` row read; anything else is treated as a refresh token and
looked up by SHA-256. `token_type_hint` only orders nothing here: both lookups are cheap
and unambiguous (a refresh token never parses as a JWT).

A token whose client has been deactivated or deleted is inactive at introspection, read
in the same statement as the token row on the hot path (`FastStore.introspection`): this
covers tokens written in a race with the change, which its revocation may have missed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from authlib.oauth2.rfc6749 import TokenMixin
from authlib.oauth2.rfc7009 import RevocationEndpoint as _RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint as _IntrospectionEndpoint

from oauth2_server.audit.log import AuditEvent, record
from oauth2_server.crypto.hashing import token_digest
from oauth2_server.oauth.bridge import current_request, is_prefetched
from oauth2_server.oauth.grants import ALL_METHODS, CONFIDENTIAL_METHODS, digest_prefix
from oauth2_server.oauth.tokens import AccessTokenCodec
from oauth2_server.storage import tokens as token_storage
from oauth2_server.storage import utcnow
from oauth2_server.storage.clients import get_client
from oauth2_server.storage.tokens import AccessTokenRecord, RefreshTokenRecord

INTROSPECT_SCOPE = "introspect"


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


def find_presented_token(db: Any, codec: AccessTokenCodec, token: str) -> PresentedToken | None:
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
    return PresentedToken("refresh_token", digest_prefix(digest), refresh=refresh)


class IntrospectionEndpoint(_IntrospectionEndpoint):
    """RFC 7662 §2. The caller authenticates as a confidential client; it learns about a
    token only if the token was issued to it or it is registered with scope `introspect`
    (a resource server); otherwise the answer is `{"active": false}` (§2.2)."""

    CLIENT_AUTH_METHODS = CONFIDENTIAL_METHODS

    def __init__(self, server: Any, codec: AccessTokenCodec, issuer: str) -> None:
        super().__init__(server)
        self.codec = codec
        self.issuer = issuer

    def query_token(self, token_string: str, token_type_hint: str | None) -> PresentedToken | None:
        """The presented token with its client's `active` flag: read with the token row up
        front on the hot path (`request.prefetched`), else here in the transaction."""
        request = current_request()
        if is_prefetched(request.prefetched):
            return request.prefetched
        token = find_presented_token(request.db, self.codec, token_string)
        if token is None:
            return None
        client = get_client(request.db, token.client_id)
        return replace(token, client_active=client is not None and client.active)

    def check_permission(self, token: PresentedToken, client: Any, request: Any) -> bool:
        return token.client_id == client.client_id or INTROSPECT_SCOPE in client.record.scopes

    def create_introspection_payload(self, token: PresentedToken | None) -> dict[str, Any]:
        """RFC 7662 §2.2; `{"active": false}` also when the token's client is deactivated
        or deleted (DESIGN.md invariant 9)."""
        if token is not None and not token.client_active:
            payload: dict[str, Any] = {"active": False}
        else:
            payload = super().create_introspection_payload(token)
        request = current_request()
        request.introspected = (token, payload["active"])
        return payload

    def introspect_token(self, token: PresentedToken) -> dict[str, Any]:
        row = token.access or token.refresh
        assert row is not None
        payload: dict[str, Any] = {
            "active": True,
            "token_type": "Bearer" if token.access else "refresh_token",
            "client_id": row.client_id,
            "scope": row.scope,
            "exp": int(row.expires_at.timestamp()),
            "iat": int(row.issued_at.timestamp()),
            "iss": self.issuer,
        }
        if token.claims is not None:
            payload.update(
                sub=token.claims["sub"], aud=token.claims.get("aud"), jti=token.claims["jti"]
            )
        return payload


class RevocationEndpoint(_RevocationEndpoint):
    """RFC 7009 §2. The caller authenticates (public clients by `client_id`) and revokes
    only its own tokens. Revoking a refresh token revokes its family, access tokens
    included (§2.1); revoking an access token revokes that token. Unknown or invalid
    tokens get 200 (§2.2)."""

    CLIENT_AUTH_METHODS = ALL_METHODS

    def __init__(self, server: Any, codec: AccessTokenCodec) -> None:
        super().__init__(server)
        self.codec = codec

    def query_token(self, token_string: str, token_type_hint: str | None) -> PresentedToken | None:
        return find_presented_token(current_request().db, self.codec, token_string)

    def revoke_token(self, token: PresentedToken, request: Any) -> None:
        now = utcnow()
        if token.access is not None:
            count = int(token_storage.revoke_access_token(request.db, token.access.jti, now))
            family_id = token.access.family_id
        else:
            assert token.refresh is not None
            family_id = token.refresh.family_id
            count = token_storage.revoke_family(request.db, family_id, now)
        record(
            request.db,
            AuditEvent(
                "revoked",
                request.context,
                client_id=token.client_id,
                subject=token.claims["sub"] if token.claims else None,
                token_id=token.token_id,
                details={"token_type": token.token_type, "family_id": family_id, "revoked": count},
            ),
        )
