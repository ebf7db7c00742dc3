"""The async `OAuthService` the HTTP layer calls (RFC 6749 §3.2 token endpoint, RFC 7662
introspection, RFC 7009 revocation, RFC 6749 §4.1 authorization).

`OAuthService` does, per request: client authentication up front (credentials parsed in
one place, `sha256$` secrets compared in constant time, legacy argon2 hashes off the event
loop and upgraded, failure limits), then the Authlib call through `Bridge.run` (one session,
one transaction), then the bookkeeping of failed authentications. The HTTP layer only parses
HTTP and renders pages. Authlib's adapter is `oauth.authlib_server`; login and consent
are `oauth.authorization`. Everything is built per instance from `Settings`: two services
in one process share no state (no class attribute, no environment variable).
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc6749 import InvalidClientError
from starlette.responses import Response

from oauth2_server import metrics
from oauth2_server.audit.bounds import UNKNOWN_USERNAME_PURPOSE
from oauth2_server.audit.log import AuditBuffer, AuditEvent
from oauth2_server.audit.risk import AuthFailureWindow, auth_failure, fixed_score
from oauth2_server.config import Settings
from oauth2_server.crypto.hashing import (
    hash_client_secret,
    is_legacy_secret_hash,
    verify_client_secret,
)
from oauth2_server.oauth.assertion_auth import AssertionAuthenticator
from oauth2_server.oauth.assertions import AssertionRefused
from oauth2_server.oauth.authlib_server import build_server, oauth_error_response
from oauth2_server.oauth.authorization import AuthorizationFlow
from oauth2_server.oauth.bridge import Bridge, OAuthRequest
from oauth2_server.oauth.client_keys import ClientKeySets
from oauth2_server.oauth.clients import (
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
from oauth2_server.oauth.context import IntrospectionPrefetch
from oauth2_server.oauth.dpop import DPoPVerifier
from oauth2_server.oauth.exchange_flow import TokenExchange, claimed_client_id
from oauth2_server.oauth.introspection_jwt import as_requested
from oauth2_server.oauth.keys import KeyStore
from oauth2_server.oauth.par import PushedAuthorization
from oauth2_server.oauth.presented import PresentedToken
from oauth2_server.oauth.throttling import (
    Attempt,
    FailureLimiter,
    RefusalLog,
    memory_counter_cap,
)
from oauth2_server.oauth.token_exchange import TOKEN_EXCHANGE
from oauth2_server.oauth.tokens import AccessTokenCodec
from oauth2_server.storage.auth_failures import MemoryCounts, PostgresCounts
from oauth2_server.storage.clients import ClientRecord, get_client, upgrade_secret_hash
from oauth2_server.upstream.providers import provider_names
from oauth2_server.upstream.service import UpstreamService


def _outcome(request: OAuthRequest, response: Response) -> str:
    """A token request's outcome for a metric label: `ok`, the RFC 6749 §5.2 error code
    Authlib answered, or the HTTP status of an answer given before Authlib."""
    if response.status_code == 200:
        return "ok"
    error = request.token_context.oauth_error
    return error.error if error is not None else str(response.status_code)


def _refusal_event(
    request: OAuthRequest, action: str, client_id: str, flags: list[str], details: dict[str, Any]
) -> AuditEvent:
    """The audit row of a refused client authentication (RFC 6749 §2.3), scored as its
    action (`risk.fixed_score`)."""
    return AuditEvent(
        action,
        request.context,
        client_id=client_id,
        grant_type=request.form.get("grant_type"),
        risk_score=fixed_score(action),
        flags=flags,
        details=details,
    )


class OAuthService:
    """What the HTTP layer calls: token (RFC 6749 §3.2, RFC 8693), introspection (RFC 7662),
    revocation (RFC 7009), pushed authorization requests (RFC 9126, `pushed`);
    `authorization` is the authorization endpoint's login and consent (RFC 6749 §4.1)."""

    grant_types_supported = ["authorization_code", "refresh_token", "client_credentials"]
    grant_types_supported.append(TOKEN_EXCHANGE)

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
        # Development over plain http (RFC 6749 §3.1 asks for TLS): this app's requests
        # pass Authlib's transport check (OAuthRequest); production requires https.
        self.allow_http = not settings.production and settings.issuer.startswith("http://")
        self.codec = AccessTokenCodec(keys, self.issuer, settings.audience)
        self.clients = ClientCache(settings.client_cache_ttl)
        self.client_keys = ClientKeySets(settings.production, settings.client_jwks_cache_ttl)
        self.assertions = AssertionAuthenticator(
            bridge, self.client_keys, self.issuer, settings.client_assertion_max_age
        )
        self.argon2 = Argon2Slots(settings.argon2_concurrency, settings.argon2_queue)
        pool = bridge.fast.pool  # None on SQLite
        self.limiter = FailureLimiter(
            PostgresCounts(pool, bridge.fast.availability)
            if pool is not None
            else MemoryCounts(memory_counter_cap(settings.limiter_max_keys)),
            settings.client_auth_failure_limit,
            settings.client_auth_failure_window,
            keys.keyring.derive(b"oauth2-server failure limiter"),
            settings.limiter_max_keys,
        )
        self.refusals = RefusalLog(audit_buffer, settings.limiter_max_keys)
        self.failures_by_ip = AuthFailureWindow(settings.client_auth_failure_window)
        server, exchange_config = build_server(settings, self.clients, self.codec, keys.keyring)
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
            keys.keyring.derive(UNKNOWN_USERNAME_PURPOSE),
        )
        self.pushed = PushedAuthorization(server, bridge, settings.pushed_request_ttl, audit_buffer)
        self.dpop = DPoPVerifier(
            bridge,
            audit_buffer,
            settings.dpop_proof_window,
            settings.dpop_nonce,
            keys.keyring.derive(b"oauth2-server dpop nonce"),
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
            _refusal_event(
                request,
                "client_auth_throttled",
                client_id,
                ["throttled"],
                {"limited_by": attempt.blocked_by},
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
        if credentials is not None and credentials.assertion is not None:
            return await self._preauthenticate_assertion(request, credentials)
        if credentials is None or credentials.secret is None:
            return None
        client_id, secret = credentials.client_id, credentials.secret
        record_ = await self._client_record(client_id)
        stored = record_.secret_hash if record_ is not None and record_.active else None
        if stored is not None and not is_legacy_secret_hash(stored):
            if verify_client_secret(stored, secret):
                request.token_context.preauth_client = OAuthClient(record_, verified_secret=secret)
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
        request.token_context.preauth_client = OAuthClient(record_, verified_secret=secret)
        return None

    async def _preauthenticate_assertion(
        self, request: OAuthRequest, credentials: ClientCredentials
    ) -> Response | None:
        """Verify a `private_key_jwt` assertion before entering Authlib (RFC 7523 §2.2, §3;
        `oauth.assertions`): the client must be active and registered with the method, the
        assertion must verify against its keys (`oauth.client_keys`), and its `jti` is
        recorded deployment-wide until `exp` (`storage.used_jtis`, purpose
        `client_assertion`), so a replay at any worker or instance is refused. Success
        marks the client verified for Authlib's `private_key_jwt` method. A failure is
        counted like a wrong secret (429 past the limit) and left to Authlib to answer
        `invalid_client`, with the reason in `token_context.assertion_error`; nothing is
        written but the limiter's count."""
        client_id, assertion = credentials.client_id, credentials.assertion
        assert assertion is not None
        record_ = await self._client_record(client_id)
        try:
            await self.assertions.authenticate(record_, client_id, assertion)
        except AssertionRefused as refused:
            request.token_context.assertion_error = refused.description
            attempt = await self.limiter.count(self._failure_keys(request, client_id))
            return self._refuse(request, client_id, attempt) if attempt.refused else None
        assert record_ is not None
        request.token_context.preauth_client = OAuthClient(record_, verified_assertion=True)
        return None

    def _note_client_failure(
        self, request: OAuthRequest, credentials: ClientCredentials | None
    ) -> None:
        """Audit an `invalid_client` answer (counted already by `_preauthenticate` when a
        secret was presented)."""
        error = request.token_context.oauth_error
        if not isinstance(error, InvalidClientError):
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
                details={
                    "reason": error.get_error_description(),
                    "method": presented_method(credentials),
                },
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
            _refusal_event(
                request,
                "client_auth_failed",
                client_id,
                ["client_auth_failed", "multiple_auth_methods"],
                {"reason": twice.description, "client_ids": list(twice.client_ids)},
            ),
        )
        return oauth_error_response("invalid_request", twice.description, 400)

    async def _claim_dpop(
        self, request: OAuthRequest, credentials: ClientCredentials | None
    ) -> Response | None:
        """Record the `jti` of the token request's DPoP proof (RFC 9449 §11.1) after client
        authentication, before the grant runs (§4.3: "These checks may be performed in any
        order"), so a caller who fails to authenticate writes no `oauth2_used_jtis` row.

        Claimed: for a client verified by `_preauthenticate` (secret or `private_key_jwt`),
        and for a request naming a client with neither (a public client: nobody can
        authenticate it). Not claimed: no client named, or a refused assertion (Authlib
        answers `invalid_client`); a secret refused by this worker's cached record only if
        the current row refuses it too (a record behind a rotation is what Authlib checks
        against, and a proof it accepts must be used once). Returns the 400
        `invalid_dpop_proof` response of a replayed `jti`, or None."""
        context = request.token_context
        if context.dpop_proof is None or credentials is None:
            return None
        if context.preauth_client is None and credentials.assertion is not None:
            return None
        if context.preauth_client is None and credentials.secret is not None:
            secret, client_id = credentials.secret, credentials.client_id
            row = await self.bridge.read(lambda db: get_client(db, client_id))
            stored = row.secret_hash if row is not None and row.active else None
            if stored is None or is_legacy_secret_hash(stored):
                return None
            if not verify_client_secret(stored, secret):
                return None
        return await self.dpop.claim(request)

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
        if refused is None:
            refused = await self._claim_dpop(request, credentials)
        if refused is not None:
            return refused
        if deferred and request.token_context.preauth_client is not None:
            response = await self.bridge.run_deferred(request, call)
        else:
            response = await self.bridge.run(request, call)
        self._note_client_failure(request, credentials)
        for event in request.token_context.refusals:
            self.audit_buffer.add(event)
        return response

    # -- endpoints ----------------------------------------------------------------------

    async def token(self, request: OAuthRequest) -> Response:
        """RFC 6749 §3.2 token endpoint: every grant, Cache-Control: no-store.

        client_credentials with a pre-verified client needs no database read, so it takes
        the bridge's deferred-write hot path (one statement on PostgreSQL). Token exchange
        (RFC 8693) may refresh an upstream grant between two bridge calls (TokenExchange).
        A DPoP proof binds the tokens to the client's key (RFC 9449, `oauth.dpop`): checked
        here, its `jti` recorded once the client is authenticated (`_claim_dpop`).
        """
        refused = await self.dpop.bind(request, self.issuer + "/oauth2/token")
        if refused is not None:
            return refused
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
        """RFC 7662 introspection, as a signed JWT when asked for (RFC 9701); audited
        through the batch buffer (read-only event).

        A JWT is verified here, and its row, whether its client is still active, and the
        current state of the client asking are read in one round trip up front
        (`IntrospectionReader`), so the Authlib call runs on the deferred path."""
        context = request.token_context
        presented = request.form.get("token", "")
        deferred = False
        if presented.count(".") == 2:
            claims = self.codec.decode(presented)
            found = (
                await self.bridge.fast.introspection(claims["jti"], claimed_client_id(request))
                if claims
                else None
            )
            context.client_state = found.caller if found is not None else None
            context.introspection = IntrospectionPrefetch(
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
        answered = context.introspected
        if answered is not None:
            token = answered.token
            metrics.INTROSPECTIONS.labels("true" if answered.active else "false").inc()
            self.audit_buffer.add(
                AuditEvent(
                    "introspected",
                    request.context,
                    client_id=request.client.client_id if request.client else None,
                    subject=token.subject if token is not None else None,
                    token_id=token.token_id if token is not None else None,
                    details={"active": answered.active},
                )
            )
        return as_requested(response, request, self.keys, self.issuer)

    async def push_authorization_request(self, request: OAuthRequest) -> Response:
        """RFC 9126 §2: a pushed authorization request, client authenticated as above."""
        return await self._authenticated_call(request, lambda: self.pushed.push(request))

    async def revoke(self, request: OAuthRequest) -> Response:
        """RFC 7009 revocation; the audit row commits with the revocation."""
        return await self._authenticated_call(
            request, lambda: self.server.create_endpoint_response("revocation", request)
        )
