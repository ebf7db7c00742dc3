"""Introspection (RFC 7662) and revocation (RFC 7009) endpoints over our token storage.

A presented token is looked up by what it is (`oauth.presented.find_presented_token`).

A token whose client has been deactivated or deleted is inactive at introspection, read
in the same statement as the token row on the hot path (`FastStore.introspection`): this
covers tokens written in a race with the change, which its revocation may have missed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from authlib.oauth2.rfc7009 import RevocationEndpoint as _RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint as _IntrospectionEndpoint

from oauth2_server.audit.log import AuditEvent, revoked_token
from oauth2_server.oauth.bridge import OAuthRequest, current_request, session_of, writer_of
from oauth2_server.oauth.context import Introspected
from oauth2_server.oauth.grants import ALL_METHODS, CONFIDENTIAL_METHODS
from oauth2_server.oauth.presented import PresentedToken, find_presented_token
from oauth2_server.oauth.tokens import AccessTokenCodec
from oauth2_server.storage import tokens as token_storage
from oauth2_server.storage import utcnow
from oauth2_server.storage.clients import get_client

INTROSPECT_SCOPE = "introspect"


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
        front on the hot path (`token_context.introspection`), else here in the
        transaction."""
        request = current_request()
        prefetched = request.token_context.introspection
        if prefetched is not None:
            return prefetched.token
        db = session_of(request)
        token = find_presented_token(db, self.codec, token_string)
        if token is None:
            return None
        client = get_client(db, token.client_id)
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
        current_request().token_context.introspected = Introspected(token, payload["active"])
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
            if "cnf" in token.claims:  # RFC 9449 §6.2: the key the token is bound to
                payload.update(cnf=token.claims["cnf"], token_type="DPoP")  # noqa: S106
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
        return find_presented_token(session_of(current_request()), self.codec, token_string)

    def revoke_token(self, token: PresentedToken, request: OAuthRequest) -> None:
        now = utcnow()
        db = session_of(request)
        if token.access is not None:
            count = int(token_storage.revoke_access_token(db, token.access.jti, now))
            family_id = token.access.family_id
            others = []
        else:
            assert token.refresh is not None
            family_id = token.refresh.family_id
            others = token_storage.revoke_family(db, family_id, now)
            count = len(others)
        writer_of(request).record(
            AuditEvent(
                "revoked",
                request.context,
                client_id=token.client_id,
                subject=token.subject,
                token_id=token.token_id,
                details={"token_type": token.token_type, "family_id": family_id, "revoked": count},
            ),
            # RFC 7009 §2.1: revoking a refresh token revokes its grant's tokens too
            *(revoked_token(t, request.context, token.client_id, cause="revoked") for t in others),
        )
