"""Authlib's `AuthorizationServer` adapted to Starlette, and the async `OAuthService` the
HTTP layer calls.

`OAuthService` does, per request: client authentication up front (cached argon2 off the
event loop, failure limits), then the Authlib call through `Bridge.run` (one session, one
transaction), then the bookkeeping of failed authentications. The HTTP layer only parses
HTTP and renders pages. The authorization endpoint's login and consent live in
`oauth.authorization` (`OAuthService.authorization`).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from authlib.oauth2.rfc6749 import AuthorizationServer, InvalidClientError, OAuth2Error
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from starlette.responses import JSONResponse, Response

from oauth2_server.audit import AuditBuffer, AuditEvent, record
from oauth2_server.config import Settings
from oauth2_server.crypto.hashing import token_digest
from oauth2_server.oauth.authorization import AuthorizationFlow
from oauth2_server.oauth.bridge import Bridge, OAuthRequest, current_request
from oauth2_server.oauth.clients import ClientCache, FailureLimiter, OAuthClient, SecretVerifier
from oauth2_server.oauth.endpoints import (
    IntrospectionEndpoint,
    PresentedToken,
    RevocationEndpoint,
)
from oauth2_server.oauth.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    RefreshTokenGrant,
    S256CodeChallenge,
)
from oauth2_server.oauth.keys import KeyStore
from oauth2_server.oauth.token_exchange import (
    TOKEN_EXCHANGE,
    TokenExchange,
    TokenExchangeConfig,
    TokenExchangeGrant,
)
from oauth2_server.oauth.tokens import AccessTokenCodec, IssuedToken, TokenGenerator
from oauth2_server.risk import AuthFailureWindow, auth_failure, ips_seen_for_family, refresh_from_ip
from oauth2_server.storage import tokens as token_storage
from oauth2_server.storage.clients import ClientRecord, get_client
from oauth2_server.upstream.service import UpstreamService

# RFC 6749 §5.2 errors that Authlib raises without a description.
DEFAULT_DESCRIPTIONS = {
    "invalid_request": "the request is missing a parameter or is malformed",
    "invalid_grant": "the grant is invalid, expired, revoked or was issued to another client",
    "invalid_scope": "the requested scope is unknown or exceeds what was granted",
    "unauthorized_client": "the client is not registered for this grant type",
    "unsupported_token_type": "token_type_hint must be access_token or refresh_token",
}


class OAuth2AuthorizationServer(AuthorizationServer):
    """Authlib's server with our client lookup, token storage and Starlette responses."""

    def __init__(
        self, clients: ClientCache, generator: TokenGenerator, refresh_family_max_age: int = 0
    ) -> None:
        super().__init__(scopes_supported=None)
        self.clients = clients
        self.refresh_family_max_age = refresh_family_max_age  # seconds; 0: no limit
        self.register_token_generator("default", generator)

    def query_client(self, client_id: str) -> OAuthClient | None:
        """The request's pre-authenticated client, else an active client by id (cached)."""
        request = current_request()
        pre = request.preauth_client
        if pre is not None and pre.client_id == client_id:
            return pre
        record_ = self.clients.get(client_id)
        if record_ is None:
            record_ = get_client(request.db, client_id)
            if record_ is not None:
                self.clients.put(record_)
        if record_ is None or not record_.active:
            return None
        return OAuthClient(record_)

    def save_token(self, token: dict[str, Any], request: OAuthRequest) -> None:
        """Store the access-token row, the refresh token's digest and the audit row, in the
        request's transaction. Pops the private `_issued` entry from the response.

        A refresh token's family ends `refresh_family_max_age` seconds after the code
        exchange that started it; rotated tokens inherit that end and never outlive it.
        """
        issued: IssuedToken = token.pop("_issued")
        db = request.db
        parent = request.refresh_token.record if request.refresh_token is not None else None
        family_id = parent.family_id if parent is not None else request.family_id
        client_id = request.client.client_id
        token_storage.insert_access_token(
            db,
            token_storage.AccessTokenRecord(
                jti=issued.jti,
                client_id=client_id,
                subject=issued.subject,
                user_id=issued.user_id,
                scope=issued.scope,
                grant_type=issued.grant_type,
                family_id=family_id,
                issued_at=issued.issued_at,
                expires_at=issued.expires_at,
                revoked_at=None,
            ),
        )
        if issued.refresh_token is not None:
            assert issued.user_id is not None and issued.refresh_expires_at is not None
            assert family_id is not None
            if parent is not None:
                family_expires_at = parent.family_expires_at
            elif self.refresh_family_max_age:
                family_expires_at = issued.issued_at + timedelta(
                    seconds=self.refresh_family_max_age
                )
            else:
                family_expires_at = None
            token_storage.insert_refresh_token(
                db,
                token_hash=token_digest(issued.refresh_token),
                family_id=family_id,
                parent_id=parent.id if parent is not None else None,
                client_id=client_id,
                user_id=issued.user_id,
                scope=parent.scope if parent is not None else issued.scope,
                issued_at=issued.issued_at,
                expires_at=issued.refresh_expires_at,
                family_expires_at=family_expires_at,
            )
        risk = (
            refresh_from_ip(request.context.ip, ips_seen_for_family(db, family_id))
            if parent is not None and family_id
            else None
        )
        record(
            db,
            AuditEvent(
                "refreshed" if parent is not None else "issued",
                request.context,
                client_id=client_id,
                subject=issued.subject,
                grant_type=issued.grant_type,
                token_id=issued.jti,
                risk_score=risk.score if risk else None,
                flags=risk.flags if risk else [],
                details={"scope": issued.scope, "family_id": family_id}
                if family_id
                else {"scope": issued.scope},
            ),
        )

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Authlib's signals are not used; audit rows are written where changes happen."""

    def create_oauth2_request(self, request: OAuthRequest) -> OAuthRequest:
        return request

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Response:
        header_map = dict(headers)
        if isinstance(body, dict):
            header_map.pop("Content-Type", None)
            return Response(
                json.dumps(body, separators=(",", ":")),
                status_code=status,
                headers=header_map,
                media_type="application/json",
            )
        return Response(body or b"", status_code=status, headers=header_map)

    def handle_error_response(self, request: OAuthRequest, error: OAuth2Error) -> Response:
        request.oauth_error = error
        if not error.description:
            error.description = DEFAULT_DESCRIPTIONS.get(error.error, error.error)
            if error.error == "unsupported_grant_type":
                grant_type = request.form.get("grant_type")
                error.description = (
                    f"grant_type {grant_type!r} is not supported"
                    if grant_type
                    else "missing 'grant_type' in request body"
                )
        return super().handle_error_response(request, error)


def oauth_error_response(
    error: str, description: str, status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An RFC 6749 §5.2 JSON error with `Cache-Control: no-store`."""
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store", "Pragma": "no-cache", **(headers or {})},
    )


class OAuthService:
    """What the HTTP layer calls: token (RFC 6749 §3.2, RFC 8693), introspection (RFC 7662),
    revocation (RFC 7009); `authorization` is the authorization endpoint's login and consent
    (RFC 6749 §4.1)."""

    grant_types_supported = [
        "authorization_code",
        "refresh_token",
        "client_credentials",
        TOKEN_EXCHANGE,
    ]

    def __init__(
        self,
        settings: Settings,
        bridge: Bridge,
        keys: KeyStore,
        audit_buffer: AuditBuffer,
    ) -> None:
        self.settings = settings
        self.bridge = bridge
        self.keys = keys
        self.audit_buffer = audit_buffer
        self.issuer = settings.issuer_url
        self.codec = AccessTokenCodec(keys, self.issuer, settings.audience)
        self.clients = ClientCache(settings.client_cache_ttl)
        self.verifier = SecretVerifier(settings.secret_cache_ttl, settings.argon2_concurrency)
        self.client_failures = FailureLimiter(
            settings.client_auth_failure_limit, settings.client_auth_failure_window
        )
        self.login_failures = FailureLimiter(
            settings.client_auth_failure_limit, settings.client_auth_failure_window
        )
        self.failures_by_ip = AuthFailureWindow(settings.client_auth_failure_window)
        generator = TokenGenerator(
            self.codec, settings.access_token_ttl, settings.refresh_token_ttl
        )
        server = OAuth2AuthorizationServer(self.clients, generator, settings.refresh_family_max_age)
        AuthorizationCodeGrant.code_ttl = settings.authorization_code_ttl
        server.register_grant(AuthorizationCodeGrant, [S256CodeChallenge(required=True)])
        server.register_grant(ClientCredentialsGrant)
        server.register_grant(RefreshTokenGrant)
        exchange_config = TokenExchangeConfig(self.codec, keys.keyring, settings.upstream_min_ttl)
        server.register_grant(TokenExchangeGrant, [exchange_config])
        server.register_endpoint(IntrospectionEndpoint(server, self.codec, self.issuer))
        server.register_endpoint(RevocationEndpoint(server, self.codec))
        self.server = server
        self.upstream = UpstreamService(
            settings, bridge.sessionmaker, keys.keyring, audit_buffer=audit_buffer
        )
        self.exchange = TokenExchange(server, self.upstream, exchange_config, bridge.fast)
        self.authorization = AuthorizationFlow(
            server,
            bridge,
            self.issuer,
            self.verifier,
            self.login_failures,
            self.failures_by_ip,
            audit_buffer,
        )

    # -- client authentication (RFC 6749 §2.3.1), before entering the bridge ------------

    async def _client_record(self, client_id: str) -> ClientRecord | None:
        record_ = self.clients.get(client_id)
        if record_ is None:
            record_ = await self.bridge.read(lambda db: get_client(db, client_id))
            if record_ is not None:
                self.clients.put(record_)
        return record_

    async def _preauthenticate(self, request: OAuthRequest) -> Response | None:
        """Verify a presented client secret off the event loop; 429 while throttled."""
        try:
            client_id, secret = extract_basic_authorization(request.headers)
        except UnicodeDecodeError:
            return oauth_error_response(
                "invalid_client",
                "malformed HTTP Basic credentials",
                401,
                {"WWW-Authenticate": 'Basic error="invalid_client"'},
            )
        if not client_id:
            client_id = request.form.get("client_id")
            secret = request.form.get("client_secret")
        if not client_id or not secret:
            return None
        record_ = await self._client_record(client_id)
        if record_ is None or not record_.active or record_.secret_hash is None:
            return None
        if not self.verifier.cached(record_, secret):
            keys = (f"client:{client_id}", f"ip:{request.context.ip}")
            wait = self.client_failures.blocked(*keys)
            if wait > 0:
                self.audit_buffer.add(
                    AuditEvent(
                        "client_auth_throttled",
                        request.context,
                        client_id=client_id,
                        flags=["throttled"],
                    )
                )
                return oauth_error_response(
                    "invalid_client",
                    "too many failed client authentications; retry later",
                    429,
                    {"Retry-After": str(max(1, int(wait) + 1))},
                )
            if not await self.verifier.verify(record_, secret):
                return None
        request.preauth_client = OAuthClient(record_, verified_secret=secret)
        return None

    def _note_client_failure(self, request: OAuthRequest) -> None:
        if not isinstance(request.oauth_error, InvalidClientError):
            return
        client_id, _ = extract_basic_authorization(request.headers)
        client_id = client_id or request.form.get("client_id")
        self.client_failures.fail(f"client:{client_id}", f"ip:{request.context.ip}")
        risk = auth_failure("client_auth_failed", self.failures_by_ip.add(request.context.ip))
        self.audit_buffer.add(
            AuditEvent(
                "client_auth_failed",
                request.context,
                client_id=(client_id or "")[:64] or None,
                grant_type=request.form.get("grant_type"),
                risk_score=risk.score,
                flags=risk.flags,
                details={"reason": request.oauth_error.get_error_description()},
            )
        )

    async def _authenticated_call(
        self, request: OAuthRequest, call: Any, deferred: bool = False
    ) -> Response:
        throttled = await self._preauthenticate(request)
        if throttled is not None:
            return throttled
        if deferred and request.preauth_client is not None and self.bridge.fast is not None:
            response = await self.bridge.run_deferred(request, call)
        else:
            response = await self.bridge.run(request, call)
        self._note_client_failure(request)
        return response

    # -- endpoints ----------------------------------------------------------------------

    async def token(self, request: OAuthRequest) -> Response:
        """RFC 6749 §3.2 token endpoint: every grant, Cache-Control: no-store.

        client_credentials with a pre-verified client needs no database read, so it takes
        the bridge's deferred-write hot path (one statement on PostgreSQL). Token exchange
        (RFC 8693) may refresh an upstream grant between two bridge calls (TokenExchange).
        """
        if request.form.get("grant_type") == TOKEN_EXCHANGE:
            return await self.exchange.token(request, self._authenticated_call)
        return await self._authenticated_call(
            request,
            lambda: self.server.create_token_response(request),
            deferred=request.form.get("grant_type") == "client_credentials",
        )

    async def introspect(self, request: OAuthRequest) -> Response:
        """RFC 7662 introspection; audited through the batch buffer (read-only event)."""
        request.introspected = None
        presented = request.form.get("token", "")
        deferred = False
        if presented.count(".") == 2 and self.bridge.fast is not None:
            # Hot path: verify the JWT and read its row up front (one round trip).
            claims = self.codec.decode(presented)
            row = await self.bridge.fast.access_token(claims["jti"]) if claims else None
            request.prefetched = (
                PresentedToken("access_token", row.jti, access=row, claims=claims)
                if row is not None
                else None
            )
            deferred = True
        response = await self._authenticated_call(
            request,
            lambda: self.server.create_endpoint_response("introspection", request),
            deferred=deferred,
        )
        if request.introspected is not None:
            token, active = request.introspected
            self.audit_buffer.add(
                AuditEvent(
                    "introspected",
                    request.context,
                    client_id=request.client.client_id if request.client else None,
                    subject=token.claims["sub"] if token is not None and token.claims else None,
                    token_id=token.token_id if token is not None else None,
                    details={"active": active},
                )
            )
        return response

    async def revoke(self, request: OAuthRequest) -> Response:
        """RFC 7009 revocation; the audit row commits with the revocation."""
        return await self._authenticated_call(
            request, lambda: self.server.create_endpoint_response("revocation", request)
        )
