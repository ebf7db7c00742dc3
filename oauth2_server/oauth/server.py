"""Authlib's `AuthorizationServer` adapted to Starlette, and the async `OAuthService` the
HTTP layer calls.

`OAuthService` does, per request: client authentication up front (credentials parsed in
one place, `sha256$` secrets compared in constant time, legacy argon2 hashes off the event
loop and upgraded, failure limits), then the Authlib call through `Bridge.run` (one session,
one transaction), then the bookkeeping of failed authentications. The HTTP layer only parses
HTTP and renders pages. The authorization endpoint's login and consent live in
`oauth.authorization` (`OAuthService.authorization`).
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    InvalidClientError,
    InvalidRequestError,
    OAuth2Error,
    UnsupportedGrantTypeError,
)
from sqlalchemy.orm import Session
from starlette.responses import JSONResponse, Response

from oauth2_server import metrics
from oauth2_server.audit.log import AuditBuffer, AuditEvent, record, stored_text
from oauth2_server.audit.risk import (
    AuthFailureWindow,
    auth_failure,
    fixed_score,
    ips_seen_for_family,
    refresh_from_ip,
)
from oauth2_server.config import Settings
from oauth2_server.crypto.hashing import (
    hash_client_secret,
    is_legacy_secret_hash,
    token_digest,
    verify_client_secret,
)
from oauth2_server.oauth.authorization import AuthorizationFlow
from oauth2_server.oauth.bridge import Bridge, OAuthRequest, current_request
from oauth2_server.oauth.clients import (
    METHOD_WORDS,
    Argon2Busy,
    Argon2Slots,
    BadClientCredentials,
    ClientCache,
    ClientCredentials,
    MultipleAuthMethods,
    OAuthClient,
    parse_client_credentials,
    presented_method,
)
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
from oauth2_server.oauth.throttling import (
    Attempt,
    FailureLimiter,
    RefusalLog,
    memory_counter_cap,
)
from oauth2_server.oauth.token_exchange import (
    TOKEN_EXCHANGE,
    TokenExchange,
    TokenExchangeConfig,
    TokenExchangeGrant,
    claimed_client_id,
)
from oauth2_server.oauth.tokens import AccessTokenCodec, IssuedToken, TokenGenerator
from oauth2_server.storage import tokens as token_storage
from oauth2_server.storage.auth_failures import MemoryCounts, PostgresCounts
from oauth2_server.storage.client_registry import upgrade_secret_hash
from oauth2_server.storage.clients import ClientRecord, get_client
from oauth2_server.upstream.providers import provider_names
from oauth2_server.upstream.service import UpstreamService

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
        pre = request.preauth_client
        if pre is not None and pre.client_id != client_id:
            pre = None
        if not isinstance(request.db, Session):
            return pre
        row = get_client(request.db, client_id)
        cached = pre.record if pre is not None else self.clients.get(client_id)
        if cached is not None and (row is None or cached.version != row.version):
            self.clients.stale(cached)
        client = self._current_client(request, pre, row)
        if pre is not None:  # Authlib may ask again in this request: answer from the row
            request.preauth_client = client
        return client

    def _current_client(
        self, request: OAuthRequest, pre: OAuthClient | None, row: ClientRecord | None
    ) -> OAuthClient | None:
        """`row` as the request may use it: None if gone or inactive; with the presented
        secret marked verified only if it matches this row's secret hash."""
        if row is None or not row.active:
            return None
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
            refresh_from_ip(
                stored_text("ip", request.context.ip),  # compared as the rows store it
                ips_seen_for_family(db, family_id),
                grace=request.refresh_token.grace,
            )
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
        request.oauth_error = error
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
        if presented == "none":  # noqa: S105 (a method name)
            return (
                f"this client authenticates with {method}, which this endpoint or grant "
                "type does not accept"
            )
        return "client authentication failed: wrong client_secret"


def _presented_secret(request: OAuthRequest, client_id: str) -> str | None:
    """The client secret the request presents for `client_id` (RFC 6749 §2.3.1), if any."""
    try:
        credentials = parse_client_credentials(request.headers, request.form)
    except BadClientCredentials:
        return None
    if credentials is None or credentials.client_id != client_id:
        return None
    return credentials.secret


def _outcome(request: OAuthRequest, response: Response) -> str:
    """A token request's outcome for a metric label: `ok`, the RFC 6749 §5.2 error code
    Authlib answered, or the HTTP status of an answer given before Authlib."""
    if response.status_code == 200:
        return "ok"
    error = request.oauth_error
    return error.error if error is not None else str(response.status_code)


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
        self.argon2 = Argon2Slots(settings.argon2_concurrency, settings.argon2_queue)
        pool = bridge.fast.pool if bridge.fast is not None else None
        self.limiter = FailureLimiter(
            PostgresCounts(pool, bridge.fast.availability if bridge.fast is not None else None)
            if pool is not None
            else MemoryCounts(memory_counter_cap(settings.limiter_max_keys)),
            settings.client_auth_failure_limit,
            settings.client_auth_failure_window,
            keys.keyring.derive(b"oauth2-server failure limiter"),
            settings.limiter_max_keys,
        )
        self.refusals = RefusalLog(audit_buffer, settings.limiter_max_keys)
        self.failures_by_ip = AuthFailureWindow(settings.client_auth_failure_window)
        generator = TokenGenerator(
            self.codec, settings.access_token_ttl, settings.refresh_token_ttl
        )
        server = OAuth2AuthorizationServer(self.clients, generator, settings.refresh_family_max_age)
        AuthorizationCodeGrant.code_ttl = settings.authorization_code_ttl
        RefreshTokenGrant.reuse_grace = settings.refresh_reuse_grace
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
            self.argon2,
            self.limiter,
            self.refusals,
            self.failures_by_ip,
            audit_buffer,
            keys.keyring.derive(b"oauth2-server device cookie"),
            settings.device_cookie_ttl,
        )

    # -- client authentication (RFC 6749 §2.3.1), before entering the bridge ------------

    async def _client_record(self, client_id: str) -> ClientRecord | None:
        """The client's record for authenticating a request before the Authlib call: this
        worker's cached copy, else read (and cached). The copy may be one change behind;
        every use is checked against the row before an answer goes out (`query_client`,
        `Bridge.run_deferred`)."""
        record_ = self.clients.get(client_id)
        if record_ is None:
            generation = self.clients.generation
            record_ = await self.bridge.read(lambda db: get_client(db, client_id))
            if record_ is not None:
                self.clients.put(record_, generation)
        return record_

    def _failure_keys(self, request: OAuthRequest, client_id: str) -> dict[str, str]:
        return {"client": client_id, "client-ip": request.context.ip or "-"}

    def _refuse(self, request: OAuthRequest, client_id: str, attempt: Attempt) -> Response:
        """429 for an attempt over a failure limit, audited once per key and window."""
        metrics.CLIENT_AUTH_THROTTLED.inc()
        self.refusals.refused(
            attempt.blocked_hash or "client",
            attempt.wait,
            AuditEvent(
                "client_auth_throttled",
                request.context,
                client_id=client_id,
                grant_type=request.form.get("grant_type"),
                risk_score=fixed_score("client_auth_throttled"),
                flags=["throttled"],
                details={"limited_by": attempt.blocked_by},
            ),
        )
        return oauth_error_response(
            "invalid_client",
            "too many failed client authentications; retry later",
            429,
            {"Retry-After": str(attempt.retry_after)},
        )

    async def _preauthenticate(
        self, request: OAuthRequest, credentials: ClientCredentials | None
    ) -> Response | None:
        """Verify a presented client secret before entering Authlib (RFC 6749 §2.3.1).

        A `sha256$` hash is compared on the loop: the correct secret always passes, however
        many failures others caused. A wrong secret (or unknown client) is counted per
        client id and per IP first; over `OAUTH2_CLIENT_AUTH_FAILURE_LIMIT` it is answered
        429 here, else Authlib answers `invalid_client`. A legacy argon2id hash reserves an
        attempt BEFORE the argon2 work (released on success, when the hash is replaced by
        its `sha256$` form), so concurrent guesses cannot run more than the limit; a full
        argon2 queue is 503 `temporarily_unavailable` with Retry-After. Returns a response
        to send instead of calling Authlib, or None.
        """
        if credentials is None or credentials.secret is None:
            return None
        client_id, secret = credentials.client_id, credentials.secret
        record_ = await self._client_record(client_id)
        stored = record_.secret_hash if record_ is not None and record_.active else None
        if stored is not None and not is_legacy_secret_hash(stored):
            if verify_client_secret(stored, secret):
                request.preauth_client = OAuthClient(record_, verified_secret=secret)
                return None
            stored = None
        attempt = await self.limiter.count(self._failure_keys(request, client_id))
        if attempt.refused:
            return self._refuse(request, client_id, attempt)
        if stored is None:
            return None  # unknown, inactive, public or wrong: Authlib answers invalid_client
        try:
            ok = await self.argon2.verify(stored, secret)
        except Argon2Busy as busy:
            await self.limiter.release(attempt)
            self.refusals.refused(
                "argon2-busy",
                self.settings.client_auth_failure_window,
                AuditEvent("argon2_busy", request.context, client_id=client_id, flags=["busy"]),
            )
            return oauth_error_response(
                "temporarily_unavailable",
                "the server is busy verifying secrets; retry later",
                503,
                {"Retry-After": str(busy.retry_after)},
            )
        if not ok:
            return None
        await self.limiter.release(attempt)
        new_hash = hash_client_secret(secret)
        await self.bridge.write(lambda db: upgrade_secret_hash(db, client_id, stored, new_hash))
        self.clients.invalidate(client_id)
        request.preauth_client = OAuthClient(record_, verified_secret=secret)
        return None

    def _note_client_failure(
        self, request: OAuthRequest, credentials: ClientCredentials | None
    ) -> None:
        """Audit an `invalid_client` answer (counted already by `_preauthenticate` when a
        secret was presented)."""
        if not isinstance(request.oauth_error, InvalidClientError):
            return
        metrics.CLIENT_AUTH_FAILURES.inc()
        client_id = credentials.client_id if credentials is not None else None
        risk = auth_failure("client_auth_failed", self.failures_by_ip.add(request.context.ip))
        self.audit_buffer.add(
            AuditEvent(
                "client_auth_failed",
                request.context,
                client_id=client_id,
                grant_type=request.form.get("grant_type"),
                risk_score=risk.score,
                flags=risk.flags,
                details={"reason": request.oauth_error.get_error_description()},
            )
        )

    def _refuse_multiple_methods(
        self, request: OAuthRequest, twice: MultipleAuthMethods
    ) -> Response:
        """400 `invalid_request` for two client authentication methods in one request
        (RFC 6749 §2.3, §5.2), before any secret is compared: no token, no limiter count.
        Audited as `client_auth_failed` with flag `multiple_auth_methods`, one row at once
        per (IP, client ids) and window plus a summary (`RefusalLog`), so a flood cannot
        grow the audit trail."""
        client_id = twice.client_ids[0]
        metrics.CLIENT_AUTH_FAILURES.inc()
        self.refusals.refused(
            self.limiter.key_hash(
                f"multiple-methods:{request.context.ip}:{' '.join(twice.client_ids)}"
            ),
            self.settings.client_auth_failure_window,
            AuditEvent(
                "client_auth_failed",
                request.context,
                client_id=client_id,
                grant_type=request.form.get("grant_type"),
                risk_score=fixed_score("client_auth_failed"),
                flags=["client_auth_failed", "multiple_auth_methods"],
                details={"reason": twice.description, "client_ids": list(twice.client_ids)},
            ),
        )
        return oauth_error_response("invalid_request", twice.description, 400)

    async def _authenticated_call(
        self, request: OAuthRequest, call: Any, deferred: bool = False
    ) -> Response:
        try:
            credentials = parse_client_credentials(request.headers, request.form)
        except MultipleAuthMethods as twice:
            return self._refuse_multiple_methods(request, twice)
        except BadClientCredentials as bad:
            metrics.CLIENT_AUTH_FAILURES.inc()
            self.refusals.refused(
                self.limiter.key_hash(f"malformed-credentials:{request.context.ip}"),
                self.settings.client_auth_failure_window,
                AuditEvent(
                    "client_auth_failed",
                    request.context,
                    grant_type=request.form.get("grant_type"),
                    flags=["client_auth_failed", "malformed"],
                    details={"reason": bad.description},
                ),
            )
            return oauth_error_response(
                "invalid_client",
                bad.description,
                401 if bad.basic else 400,
                {"WWW-Authenticate": 'Basic error="invalid_client"'} if bad.basic else None,
            )
        refused = await self._preauthenticate(request, credentials)
        if refused is not None:
            return refused
        if deferred and request.preauth_client is not None and self.bridge.fast is not None:
            response = await self.bridge.run_deferred(request, call)
        else:
            response = await self.bridge.run(request, call)
        self._note_client_failure(request, credentials)
        return response

    # -- endpoints ----------------------------------------------------------------------

    async def token(self, request: OAuthRequest) -> Response:
        """RFC 6749 §3.2 token endpoint: every grant, Cache-Control: no-store.

        client_credentials with a pre-verified client needs no database read, so it takes
        the bridge's deferred-write hot path (one statement on PostgreSQL). Token exchange
        (RFC 8693) may refresh an upstream grant between two bridge calls (TokenExchange).
        """
        grant_type = request.form.get("grant_type")
        if grant_type == TOKEN_EXCHANGE:
            response = await self.exchange.token(request, self._authenticated_call)
            audience = request.form.get("audience")
            metrics.TOKEN_EXCHANGES.labels(
                audience if audience in provider_names() else "other",
                _outcome(request, response),
            ).inc()
        else:
            response = await self._authenticated_call(
                request,
                lambda: self.server.create_token_response(request),
                deferred=grant_type == "client_credentials",
            )
        if response.status_code == 200:  # only a grant type we support answers 200
            metrics.TOKENS_ISSUED.labels(grant_type).inc()
        return response

    async def introspect(self, request: OAuthRequest) -> Response:
        """RFC 7662 introspection; audited through the batch buffer (read-only event)."""
        request.introspected = None
        presented = request.form.get("token", "")
        deferred = False
        if presented.count(".") == 2 and self.bridge.fast is not None:
            # Hot path: verify the JWT and read, in one round trip, its row, whether its
            # client is still active, and the current state of the client asking.
            claims = self.codec.decode(presented)
            found = (
                await self.bridge.fast.introspection(claims["jti"], claimed_client_id(request))
                if claims
                else None
            )
            request.client_state = found.caller if found is not None else None
            request.prefetched = (
                PresentedToken(
                    "access_token",
                    found.access.jti,
                    access=found.access,
                    claims=claims,
                    client_active=found.client_active,
                )
                if found is not None and found.access is not None
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
            metrics.INTROSPECTIONS.labels("true" if active else "false").inc()
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
