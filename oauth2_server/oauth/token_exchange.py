"""RFC 8693 token exchange on the token endpoint: a branch's upstream (Google) access token
for a downstream service (DESIGN.md "Upstream brokering" 3).

Request (§2.1): `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`,
`subject_token` (an access token this server issued to the calling client),
`subject_token_type=urn:ietf:params:oauth:token-type:access_token`, `audience` (the
provider, e.g. `google`), `branch_id`, optional `scope`. The caller authenticates as a
confidential client registered for this grant type, holding scope `upstream:<provider>`
and granted the branch (or `*`).

Response (§2.2.1): the provider's access token as `access_token`, `issued_token_type`
access_token, `token_type` Bearer, `expires_in` (≥ OAUTH2_UPSTREAM_MIN_TTL seconds, unless
the provider itself just issued a shorter-lived token: then its true remaining life) and
`scope` (what the upstream token actually holds; a requested `scope` can only narrow the
request, not the Google token). Never the upstream refresh token.

Errors (§2.2.2, RFC 6749 §5.2): a missing parameter or a bad subject token (forged,
expired, revoked, another client's) → `invalid_request`; an audience, resource or branch
the caller may not use → `invalid_target`; scope beyond the grant → `invalid_scope`; a
branch not connected, or whose grant needs new consent → `invalid_grant` naming the
branch; provider timeout/5xx → `temporarily_unavailable` (503).

Two halves, because Authlib runs synchronously inside the database bridge and the
provider must be called with async httpx: `TokenExchangeGrant` (sync) validates and
authorises, and answers when the stored token is fresh; when it is not, it raises
`RefreshRequired` (nothing written) and `TokenExchange` (async) has
`upstream.service.UpstreamService.ensure_fresh` refresh the grant under its row lock,
then runs the grant once more. A synchronous HTTP client inside the grant would block
the event loop for the whole provider round trip; this way the grant stays pure
validation and storage, and the only provider call is awaited.

Fresh path (the common case): `TokenExchange` reads the subject token's row and the
branch/grant in one statement before the grant runs, so the grant runs on the bridge's
deferred-write path; its `exchanged` audit row is written in one statement, and only when
the exchange succeeds (the same commit rule as every grant).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.grants.base import BaseGrant, TokenEndpointMixin
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from sqlalchemy.orm import Session
from starlette.responses import Response

from oauth2_server.audit.log import AuditEvent, record
from oauth2_server.crypto.keyring import DecryptionError, Keyring
from oauth2_server.oauth.bridge import OAuthRequest, is_prefetched
from oauth2_server.oauth.grants import CONFIDENTIAL_METHODS
from oauth2_server.oauth.tokens import AccessTokenCodec
from oauth2_server.storage import tokens as token_storage
from oauth2_server.storage import utcnow
from oauth2_server.storage.exchange import ExchangePrefetch, exchange_target
from oauth2_server.storage.fastpath import FastStore
from oauth2_server.storage.upstream import CredentialRow
from oauth2_server.upstream.providers import provider_names
from oauth2_server.upstream.sealing import ACCESS, open_token
from oauth2_server.upstream.service import (
    CredentialGone,
    NeedsConsent,
    RefreshMisconfigured,
    RefreshUnavailable,
    UpstreamService,
    printable,
)

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 (a URN)
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 (a URN)
UPSTREAM_SCOPE_PREFIX = "upstream:"


class InvalidTargetError(OAuth2Error):
    """RFC 8693 §2.2.2: the audience, resource or branch is not one this client may use."""

    error = "invalid_target"


class TemporarilyUnavailableError(OAuth2Error):
    """The upstream provider did not answer usably; retry later (HTTP 503)."""

    error = "temporarily_unavailable"
    status_code = 503


class ServerError(OAuth2Error):
    """This server cannot complete the exchange (configuration or stored data; HTTP 500)."""

    error = "server_error"
    status_code = 500


class RefreshRequired(Exception):
    """Raised by the grant when the stored upstream token is too close to expiry."""

    def __init__(self, credential_id: str, client_id: str, branch_id: str, provider: str):
        super().__init__(credential_id)
        self.credential_id = credential_id
        self.client_id = client_id
        self.branch_id = branch_id
        self.provider = provider


@dataclass(frozen=True)
class TokenExchangeConfig:
    """Authlib grant extension carrying what the grant needs (no module globals):
    the access-token codec, the keyring and the minimum lifetime (seconds)."""

    codec: AccessTokenCodec
    keyring: Keyring
    min_ttl: int

    def __call__(self, grant: TokenExchangeGrant) -> None:
        grant.config = self


def reconnect_hint(branch_id: str, provider: str) -> str:
    """What an admin runs to (re)connect a branch, for error descriptions."""
    command = f"oauth2-server branches connect {branch_id} --provider {provider}"
    return f"an admin must reconnect it: {command}"


class TokenExchangeGrant(BaseGrant, TokenEndpointMixin):
    """RFC 8693 §2 token exchange for a branch's upstream access token (see module doc).

    Raises InvalidRequestError, InvalidTargetError, InvalidScopeError, InvalidGrantError,
    UnauthorizedClientError, ServerError, or RefreshRequired (handled by TokenExchange).
    """

    GRANT_TYPE = TOKEN_EXCHANGE
    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_METHODS
    config: TokenExchangeConfig

    def _param(self, name: str) -> str:
        value = self.request.payload.data.get(name)
        if not value:
            raise InvalidRequestError(f"missing '{name}' (RFC 8693 2.1)")
        return value

    def _prefetched(self, jti: str, client_id: str) -> ExchangePrefetch | None:
        """The rows TokenExchange read up front, if they are for exactly this request."""
        pre = self.request.prefetched
        if not is_prefetched(pre) or not isinstance(pre, ExchangePrefetch):
            return None
        data = self.request.payload.data
        if pre.matches(jti, client_id, data.get("branch_id", ""), data.get("audience", "")):
            return pre
        if not isinstance(self.request.db, Session):  # deferred path: nothing to read with
            raise InvalidRequestError("the client is identified inconsistently")
        return None

    def _subject_claims(self, token: str, client_id: str) -> dict[str, Any]:
        """RFC 8693 §2.1 `subject_token`: an unexpired, unrevoked access token of ours,
        issued to this client."""
        claims = self.config.codec.decode(token)
        if claims is None:
            raise InvalidRequestError(
                "subject_token is not a valid, unexpired access token issued by this server"
            )
        if claims.get("client_id") != client_id:
            raise InvalidRequestError("subject_token was not issued to this client")
        self.prefetch = self._prefetched(claims["jti"], client_id)
        row = (
            self.prefetch.access
            if self.prefetch is not None
            else token_storage.get_access_token(self.request.db, claims["jti"])
        )
        if row is None or row.client_id != client_id:
            raise InvalidRequestError("subject_token is not known to this server")
        if row.revoked_at is not None:
            raise InvalidRequestError("subject_token has been revoked")
        if row.expires_at <= utcnow():
            raise InvalidRequestError("subject_token has expired")
        return claims

    def validate_token_request(self) -> None:
        request = self.request
        client = self.authenticate_token_endpoint_client()
        request.client = client
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(
                "the client is not registered for the token-exchange grant type"
            )
        data = request.payload.data
        if data.get("actor_token") or data.get("actor_token_type"):
            raise InvalidRequestError("delegation (actor_token) is not supported")
        subject_token = self._param("subject_token")
        subject_token_type = self._param("subject_token_type")
        if subject_token_type != ACCESS_TOKEN_TYPE:
            raise InvalidRequestError(f"subject_token_type must be {ACCESS_TOKEN_TYPE}")
        requested = data.get("requested_token_type")
        if requested and requested != ACCESS_TOKEN_TYPE:
            raise InvalidRequestError(f"requested_token_type must be {ACCESS_TOKEN_TYPE}")
        audience = self._param("audience")
        branch_id = self._param("branch_id")
        self.claims = self._subject_claims(subject_token, client.client_id)
        if data.get("resource"):
            raise InvalidTargetError("'resource' is not supported: name the provider in audience")
        if audience not in provider_names():
            raise InvalidTargetError(
                f"unknown audience '{printable(audience, 60)}'; "
                f"upstream providers: {', '.join(provider_names())}"
            )
        if UPSTREAM_SCOPE_PREFIX + audience not in client.record.scopes:
            raise InvalidTargetError(
                f"this client may not obtain {audience} tokens "
                f"(it needs scope {UPSTREAM_SCOPE_PREFIX}{audience})"
            )
        target = (
            self.prefetch.target
            if self.prefetch is not None
            else exchange_target(request.db, client.client_id, branch_id, audience)
        )
        if target is None or not target.granted:
            raise InvalidTargetError(
                f"branch '{printable(branch_id, 100)}' is unknown or not granted to this client"
            )
        if not target.branch_active:
            raise InvalidTargetError(f"branch '{branch_id}' is deactivated")
        credential = target.credential
        if credential is None:
            raise InvalidGrantError(
                f"branch '{branch_id}' is not connected to {audience}; "
                + reconnect_hint(branch_id, audience).replace("reconnect", "connect")
            )
        if credential.needs_consent:
            raise InvalidGrantError(
                f"branch '{branch_id}' needs a new {audience} consent "
                f"({printable(credential.consent_error or 'grant refused')}); "
                + reconnect_hint(branch_id, audience)
            )
        granted = credential.scope.split()
        requested_scope = (request.payload.scope or "").split()
        beyond = [s for s in requested_scope if s not in granted]
        if beyond:
            raise InvalidScopeError(
                f"scope exceeds what branch '{branch_id}' granted at {audience}: "
                + printable(" ".join(beyond))
            )
        remaining = credential.access_expires_at - utcnow()
        fresh = remaining >= timedelta(seconds=self.config.min_ttl)
        refreshed_now = getattr(request, "upstream_refreshed", False)
        if not fresh and not (refreshed_now and remaining > timedelta(seconds=0)):
            if refreshed_now:
                raise TemporarilyUnavailableError(
                    f"{audience} issued an already expired token; try again later"
                )
            raise RefreshRequired(credential.id, client.client_id, branch_id, audience)
        self.audience = audience
        self.branch_id = branch_id
        self.credential = credential

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        credential: CredentialRow = self.credential
        try:
            access_token = open_token(
                self.config.keyring,
                key_id=credential.encryption_key_id,
                ciphertext=credential.access_token_ciphertext,
                credential_id=credential.id,
                provider=credential.provider,
                account_sub=credential.account_sub,
                kind=ACCESS,
            )
        except DecryptionError:
            raise ServerError(
                f"the stored {self.audience} grant of branch '{self.branch_id}' does not "
                "decrypt (tampered, or its encryption key is gone); "
                + reconnect_hint(self.branch_id, self.audience)
            ) from None
        expires_in = int((credential.access_expires_at - utcnow()).total_seconds())
        request = self.request
        record(
            request.db,
            AuditEvent(
                "exchanged",
                request.context,
                client_id=request.client.client_id,
                subject=self.claims["sub"],
                branch_id=self.branch_id,
                grant_type=self.GRANT_TYPE,
                token_id=self.claims["jti"],
                details={
                    "provider": self.audience,
                    "credential_id": credential.id,
                    "expires_in": expires_in,
                    "scope": credential.scope,
                },
            ),
        )
        body = {
            "access_token": access_token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "scope": credential.scope,
        }
        return 200, body, self.TOKEN_RESPONSE_HEADER


AuthenticatedCall = Callable[..., Awaitable[Response]]


def claimed_client_id(request: OAuthRequest) -> str | None:
    """The client id the request names (HTTP Basic, else the body), before authentication."""
    try:
        client_id, _ = extract_basic_authorization(request.headers)
    except UnicodeDecodeError:
        return None
    return client_id or request.form.get("client_id")


class TokenExchange:
    """The async half: read what the grant needs in one statement, run the grant (on the
    bridge's deferred-write path when that read succeeded: no session, the `exchanged`
    audit row written in one statement); if the grant needs a fresh upstream token,
    refresh through `UpstreamService.ensure_fresh` (own transaction, row lock) and run
    the grant again.

    `server` is the Authlib server the grant is registered on (for its error responses);
    `fast` the bridge's FastStore (None: always the session path).
    """

    def __init__(
        self,
        server: Any,
        upstream: UpstreamService,
        config: TokenExchangeConfig,
        fast: FastStore | None = None,
    ) -> None:
        self.server = server
        self.upstream = upstream
        self.config = config
        self.fast = fast

    async def _prefetch(self, request: OAuthRequest) -> bool:
        """Read the subject token's row and the target up front; True if done."""
        form = request.form
        subject, branch_id = form.get("subject_token", ""), form.get("branch_id")
        audience, client_id = form.get("audience"), claimed_client_id(request)
        if self.fast is None or not (branch_id and audience and client_id):
            return False
        if subject.count(".") != 2:
            return False
        claims = self.config.codec.decode(subject)
        if claims is None:
            return False
        request.prefetched = await self.fast.prefetch_exchange(
            claims["jti"], client_id, branch_id, audience
        )
        return True

    async def _run(self, request: OAuthRequest, call: AuthenticatedCall) -> Response:
        deferred = await self._prefetch(request)
        return await call(
            request, lambda: self.server.create_token_response(request), deferred=deferred
        )

    async def token(self, request: OAuthRequest, call: AuthenticatedCall) -> Response:
        """Answer one token-exchange request; `call(request, fn, deferred=…)` authenticates
        the client and runs `fn` through the bridge (OAuthService._authenticated_call)."""
        try:
            return await self._run(request, call)
        except RefreshRequired as needed:
            need = needed
        error: OAuth2Error
        try:
            await self.upstream.ensure_fresh(
                need.credential_id,
                client_id=need.client_id,
                branch_id=need.branch_id,
                context=request.context,
            )
        except NeedsConsent as exc:
            error = InvalidGrantError(
                f"branch '{need.branch_id}' needs a new {need.provider} consent "
                f"({printable(exc)}); " + reconnect_hint(need.branch_id, need.provider)
            )
        except CredentialGone:
            error = InvalidGrantError(
                f"branch '{need.branch_id}' is no longer connected to {need.provider}"
            )
        except RefreshUnavailable as exc:
            error = TemporarilyUnavailableError(
                f"{need.provider} is unavailable ({printable(exc)}); try again later"
            )
        except RefreshMisconfigured as exc:
            error = ServerError(printable(exc, 300))
        else:
            request.upstream_refreshed = True  # type: ignore[attr-defined]
            try:
                return await self._run(request, call)
            except RefreshRequired:
                error = TemporarilyUnavailableError(
                    f"branch '{need.branch_id}' could not be refreshed; try again later"
                )
        return self.server.handle_error_response(request, error)
