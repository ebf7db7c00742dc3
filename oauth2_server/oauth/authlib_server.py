"""Authlib's `AuthorizationServer` adapted to this server (RFC 6749): client lookup
against the current row, token storage through the request's `IssueWriter`, Starlette
responses, and RFC 6749 §5.2 error descriptions in plain words.

`OAuthService` (oauth.server) builds one per app and calls it through the bridge.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    InvalidClientError,
    InvalidRequestError,
    OAuth2Error,
    UnsupportedGrantTypeError,
)
from starlette.responses import JSONResponse, Response

from oauth2_server.audit.log import AuditEvent, stored_text
from oauth2_server.audit.risk import Assessment, ips_seen_for_family, refresh_from_ip
from oauth2_server.config import Settings
from oauth2_server.crypto.hashing import is_legacy_secret_hash, token_digest, verify_client_secret
from oauth2_server.crypto.keyring import Keyring
from oauth2_server.oauth.bridge import OAuthRequest, current_request, session_of, writer_of
from oauth2_server.oauth.clients import (
    METHOD_WORDS,
    BadClientCredentials,
    ClientCache,
    OAuthClient,
    parse_client_credentials,
    presented_method,
)
from oauth2_server.oauth.endpoints import IntrospectionEndpoint, RevocationEndpoint
from oauth2_server.oauth.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    CodeLifetime,
    RefreshTokenGrant,
    ReuseGrace,
    S256CodeChallenge,
)
from oauth2_server.oauth.token_exchange import TokenExchangeConfig, TokenExchangeGrant
from oauth2_server.oauth.tokens import AccessTokenCodec, IssuedToken, TokenGenerator
from oauth2_server.storage import tokens as token_storage
from oauth2_server.storage.clients import KEY_METHOD, PUBLIC_METHOD, ClientRecord, get_client
from oauth2_server.storage.tokens import AccessTokenRecord, RefreshTokenRecord

# RFC 6749 §5.2 errors that Authlib raises without a description.
DEFAULT_DESCRIPTIONS = {
    "invalid_request": "the request is missing a parameter or is malformed",
    "invalid_grant": "the grant is invalid, expired, revoked or was issued to another client",
    "invalid_scope": "the requested scope is unknown or exceeds what was granted",
    "unauthorized_client": "the client is not registered for this grant type",
    "unsupported_token_type": "token_type_hint must be access_token or refresh_token",
}

_NOT_ERROR_TEXT = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def plain(value: str, limit: int = 64) -> str:
    """A caller's value quoted for an error description: at most `limit` characters, each
    one RFC 6749 §5.2 allows in `error_description` (others become `?`), in single
    quotes; never a Python repr."""
    cut = value[:limit] + ("..." if len(value) > limit else "")
    return "'" + _NOT_ERROR_TEXT.sub("?", cut) + "'"


class OAuth2AuthorizationServer(AuthorizationServer):
    """Authlib's server with our client lookup, token storage and Starlette responses."""

    def __init__(
        self, clients: ClientCache, generator: TokenGenerator, refresh_family_max_age: int = 0
    ) -> None:
        super().__init__(scopes_supported=None)
        self.clients = clients
        self.refresh_family_max_age = refresh_family_max_age  # seconds; 0: no limit
        self.register_token_generator("default", generator)
        self.register_client_auth_method(KEY_METHOD, _authenticate_private_key_jwt)

    def query_client(self, client_id: str) -> OAuthClient | None:
        """Client `client_id` as this request may use it (RFC 6749 §2.3.1), or None when it
        is unknown or inactive.

        Inside a transaction (`Bridge.run`) the client row is read there, never taken from
        the cache, so the answer is about the current row (DESIGN.md invariant 9): the
        pre-authenticated client is kept when it was verified against this very version;
        otherwise the presented secret is compared with the row's `sha256$` hash (constant
        time), and a cached record found behind the row is dropped (`ClientCache.stale`).
        On the deferred path (no session) only the pre-authenticated client is known; its
        record is checked against the row by `Bridge.run_deferred`.
        """
        request = current_request()
        context = request.token_context
        pre = context.preauth_client
        if pre is not None and pre.client_id != client_id:
            pre = None
        if request.db is None:
            return pre
        row = get_client(request.db, client_id)
        cached = pre.record if pre is not None else self.clients.get(client_id)
        if cached is not None and (row is None or cached.version != row.version):
            self.clients.stale(cached)
        client = self._current_client(request, pre, row)
        if pre is not None:  # Authlib may ask again in this request: answer from the row
            context.preauth_client = client
        return client

    def _current_client(
        self, request: OAuthRequest, pre: OAuthClient | None, row: ClientRecord | None
    ) -> OAuthClient | None:
        """`row` as the request may use it: None if gone or inactive; with the presented
        secret marked verified only if it matches this row's secret hash."""
        if row is None or not row.active:
            return None
        if pre is not None and pre.verified_assertion:  # verified against these keys only
            same_keys = (pre.record.jwks, pre.record.jwks_uri) == (row.jwks, row.jwks_uri)
            return OAuthClient(row, verified_assertion=same_keys)
        if pre is not None and pre.record.secret_hash == row.secret_hash:
            return OAuthClient(row, verified_secret=pre.verified_secret)
        if pre is not None:
            secret = pre.verified_secret
        else:
            secret = _presented_secret(request, row.client_id)
        stored = row.secret_hash
        if (
            secret is not None
            and stored is not None
            and not is_legacy_secret_hash(stored)
            and verify_client_secret(stored, secret)
        ):
            return OAuthClient(row, verified_secret=secret)
        return OAuthClient(row)

    def save_token(self, token: dict[str, Any], request: OAuthRequest) -> None:
        """Store the access-token row, the refresh token's digest and the audit row through
        the request's `IssueWriter` (its transaction, or the hot path's batch). Pops the
        private `_issued` entry from the response (RFC 6749 §5.1)."""
        issued: IssuedToken = token.pop("_issued")
        writer = writer_of(request)
        parent = request.refresh_token.record if request.refresh_token is not None else None
        family_id = parent.family_id if parent is not None else request.token_context.family_id
        client_id = request.client.client_id
        writer.insert_access_token(
            AccessTokenRecord(
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
            )
        )
        if issued.refresh_token is not None:
            assert family_id is not None
            self._save_refresh_token(request, issued, family_id, parent)
        risk = self._refresh_risk(request, family_id) if parent is not None else None
        writer.record(
            AuditEvent(
                "refreshed" if parent is not None else "issued",
                request.context,
                client_id=client_id,
                subject=issued.subject,
                grant_type=issued.grant_type,
                token_id=issued.jti,
                risk_score=risk.score if risk else None,
                flags=risk.flags if risk else [],
                details=_issue_details(issued.scope, family_id, request.token_context.resources),
            )
        )

    def _family_expires_at(
        self, issued: IssuedToken, parent: RefreshTokenRecord | None
    ) -> datetime | None:
        """A refresh token family's absolute end (UTC): `refresh_family_max_age` seconds
        after the code exchange that started it; rotated tokens inherit it. None: no end."""
        if parent is not None:
            return parent.family_expires_at
        if self.refresh_family_max_age:
            return issued.issued_at + timedelta(seconds=self.refresh_family_max_age)
        return None

    def _save_refresh_token(
        self,
        request: OAuthRequest,
        issued: IssuedToken,
        family_id: str,
        parent: RefreshTokenRecord | None,
    ) -> None:
        """Store the new refresh token's digest in its family (RFC 6749 §6; RFC 9700
        §4.14.2), a child of `parent` when this is a rotation, in the transaction. A public
        client's token is bound to the key of the request's DPoP proof (RFC 9449 §5)."""
        assert issued.refresh_token is not None
        assert issued.user_id is not None and issued.refresh_expires_at is not None
        new = token_storage.NewRefreshToken(
            token_hash=token_digest(issued.refresh_token),
            family_id=family_id,
            parent_id=parent.id if parent is not None else None,
            client_id=request.client.client_id,
            user_id=issued.user_id,
            scope=parent.scope if parent is not None else issued.scope,
            issued_at=issued.issued_at,
            expires_at=issued.refresh_expires_at,
            family_expires_at=self._family_expires_at(issued, parent),
            dpop_jkt=request.token_context.dpop_jkt if _public(request.client) else None,
            # RFC 8707 §2.2: the family keeps what the authorization granted
            resources=parent.resources
            if parent is not None
            else request.token_context.granted_resources,
        )
        token_storage.insert_refresh_token(session_of(request), new)

    def _refresh_risk(self, request: OAuthRequest, family_id: str | None) -> Assessment | None:
        """Risk of a refresh (`risk.refresh_from_ip`): the live IP, compared as the audit
        rows store it, against the IPs the family was used from."""
        if not family_id:
            return None
        return refresh_from_ip(
            stored_text("ip", request.context.ip),
            ips_seen_for_family(session_of(request), family_id),
            grace=request.refresh_token.grace,
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
        """An RFC 6749 §5.2 error in plain words: a missing `grant_type` is
        `invalid_request` (Authlib says `unsupported_grant_type`); `invalid_client` names
        what the client presented and the method it is registered with (Authlib's text
        names a Python list); no description carries a Python repr or a character §5.2
        forbids."""
        if isinstance(error, UnsupportedGrantTypeError):
            grant_type = request.form.get("grant_type")
            if grant_type:
                error.description = f"grant_type {plain(grant_type)} is not supported"
            else:
                error = InvalidRequestError(
                    description="the request has no grant_type parameter (RFC 6749 section 4)"
                )
        elif isinstance(error, InvalidClientError):
            error.description = self._invalid_client_description(request)
        elif not error.description:
            error.description = DEFAULT_DESCRIPTIONS.get(error.error, error.error)
        request.token_context.oauth_error = error
        return super().handle_error_response(request, error)

    def _invalid_client_description(self, request: OAuthRequest) -> str:
        """Why client authentication failed (RFC 6749 §2.3, §5.2), naming the client's
        registered `token_endpoint_auth_method` when the request used another one."""
        try:
            credentials = parse_client_credentials(request.headers, request.form)
        except BadClientCredentials as bad:  # answered before Authlib; kept for safety
            return bad.description
        if credentials is None:
            return (
                "no client authentication: send client_id and client_secret with HTTP "
                "Basic (RFC 6749 section 2.3.1), or client_id alone for a public client"
            )
        client = self.query_client(credentials.client_id)
        if client is None:
            return "unknown or inactive client"
        registered = client.record.token_endpoint_auth_method
        presented = presented_method(credentials)
        method = METHOD_WORDS.get(registered, registered)
        if presented != registered:
            return f"this client authenticates with {method}, not {presented}"
        if presented == KEY_METHOD:
            reason = request.token_context.assertion_error
            return f"client assertion refused: {reason or 'not verified'}"
        if presented == "none":  # noqa: S105 (a method name)
            return (
                f"this client authenticates with {method}, which this endpoint or grant "
                "type does not accept"
            )
        return "client authentication failed: wrong client_secret"


def _authenticate_private_key_jwt(query_client: Any, request: OAuthRequest) -> Any:
    """Authlib's `private_key_jwt` method (RFC 7523 §2.2): the client whose assertion
    `OAuthService._preauthenticate` verified (signature, claims, `jti` recorded), as
    `query_client` finds it against the current row; None otherwise."""
    pre = request.token_context.preauth_client
    if "client_assertion" not in request.form or pre is None or not pre.verified_assertion:
        return None
    client = query_client(pre.client_id)
    return client if client is not None and client.verified_assertion else None


def _issue_details(scope: str, family_id: str | None, resources: list[str]) -> dict[str, Any]:
    """An `issued`/`refreshed` row's details: scope, family (if any), and the resource
    indicators the token is for (RFC 8707; if any)."""
    details: dict[str, Any] = {"scope": scope}
    if family_id:
        details["family_id"] = family_id
    if resources:
        details["resources"] = resources
    return details


def _public(client: OAuthClient) -> bool:
    """A public client (RFC 6749 §2.1): it authenticates with `none`."""
    return client.record.token_endpoint_auth_method == PUBLIC_METHOD


def _presented_secret(request: OAuthRequest, client_id: str) -> str | None:
    """The client secret the request presents for `client_id` (RFC 6749 §2.3.1), if any."""
    try:
        credentials = parse_client_credentials(request.headers, request.form)
    except BadClientCredentials:
        return None
    if credentials is None or credentials.client_id != client_id:
        return None
    return credentials.secret


def build_server(
    settings: Settings, clients: ClientCache, codec: AccessTokenCodec, keyring: Keyring
) -> tuple[OAuth2AuthorizationServer, TokenExchangeConfig]:
    """One app's Authlib server: every grant (RFC 6749 §4.1 with RFC 7636 S256, §4.4, §6;
    RFC 8693) and endpoint (RFC 7662, RFC 7009), configured through Authlib grant
    extensions on this server only (`CodeLifetime`, `ReuseGrace`, `TokenExchangeConfig`).
    Returns the server and the token-exchange configuration."""
    generator = TokenGenerator(codec, settings.access_token_ttl, settings.refresh_token_ttl)
    server = OAuth2AuthorizationServer(clients, generator, settings.refresh_family_max_age)
    server.register_grant(
        AuthorizationCodeGrant,
        [S256CodeChallenge(required=True), CodeLifetime(settings.authorization_code_ttl)],
    )
    server.register_grant(ClientCredentialsGrant)
    server.register_grant(RefreshTokenGrant, [ReuseGrace(settings.refresh_reuse_grace)])
    exchange_config = TokenExchangeConfig(codec, keyring, settings.upstream_min_ttl)
    server.register_grant(TokenExchangeGrant, [exchange_config])
    server.register_endpoint(IntrospectionEndpoint(server, codec, settings.issuer_url))
    server.register_endpoint(RevocationEndpoint(server, codec))
    return server, exchange_config


def oauth_error_response(
    error: str, description: str, status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An RFC 6749 §5.2 JSON error with `Cache-Control: no-store`."""
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store", "Pragma": "no-cache", **(headers or {})},
    )
