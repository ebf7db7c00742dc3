"""RFC 8693 token exchange on the token endpoint: a branch's upstream (Google) access token
for a downstream service (DESIGN.md "Upstream brokering" 3).

Request (§2.1): `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`,
`subject_token` (an access token this server issued to the calling client, itself
carrying scope `upstream:<provider>`),
`subject_token_type=urn:ietf:params:oauth:token-type:access_token`, `audience` (the
provider, e.g. `google`), `branch_id`, optional `scope`. The caller authenticates as a
confidential client registered for this grant type, holding scope `upstream:<provider>`
and granted the branch (or `*`).

Response (§2.2.1): the provider's access token as `access_token`, `issued_token_type`
access_token, `token_type` Bearer, `expires_in` (≥ OAUTH2_UPSTREAM_MIN_TTL seconds, unless
the provider's tokens live shorter: then their true remaining life, at least half their
lifetime, `upstream.freshness`; or the provider just issued a shorter-lived one) and
`scope` (what the upstream token actually holds; a requested `scope` can only narrow the
request, not the Google token). Never the upstream refresh token.

Errors (§2.2.2, RFC 6749 §5.2): a missing parameter or a bad subject token (forged,
expired, revoked, another client's, or lacking scope `upstream:<provider>`: §2.2.2 "the
subject_token … [is] invalid or unacceptable") → `invalid_request`; an audience, resource or branch
the caller may not use → `invalid_target`; scope beyond the grant → `invalid_scope`; a
branch not connected, or whose grant needs new consent → `invalid_grant` naming the
branch; provider timeout/5xx → `temporarily_unavailable` (503).

Two halves, because Authlib runs synchronously inside the database bridge and the
provider must be called with async httpx: `TokenExchangeGrant` (sync, this module)
validates and authorises, and answers when the stored token is fresh; when it is not, it
raises `RefreshRequired` (nothing written) and `oauth.exchange_flow.TokenExchange` (async) has
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

from oauth2_server.audit.log import AuditEvent
from oauth2_server.crypto.keyring import DecryptionError, Keyring
from oauth2_server.oauth.bridge import session_of, writer_of
from oauth2_server.oauth.grants import CONFIDENTIAL_METHODS
from oauth2_server.oauth.tokens import AccessTokenCodec
from oauth2_server.storage import tokens as token_storage
from oauth2_server.storage import utcnow
from oauth2_server.storage.exchange import ExchangePrefetch, exchange_target
from oauth2_server.storage.upstream import CredentialRow
from oauth2_server.upstream.freshness import refresh_due
from oauth2_server.upstream.providers import provider_names
from oauth2_server.upstream.sealing import ACCESS, open_token
from oauth2_server.upstream.service import (
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
        pre = self.request.token_context.exchange
        if pre is None:
            return None
        data = self.request.payload.data
        if pre.matches(jti, client_id, data.get("branch_id", ""), data.get("audience", "")):
            return pre
        if self.request.db is None:  # deferred path: nothing to read with
            raise InvalidRequestError("the client is identified inconsistently")
        return None

    def _subject_claims(self, token: str, client_id: str) -> dict[str, Any]:
        """RFC 8693 §2.1 `subject_token`: an unexpired, unrevoked access token of ours,
        issued to this client; a DPoP-bound one (`cnf.jkt`, RFC 9449) only with a proof of
        its key on this request."""
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
            else token_storage.get_access_token(session_of(self.request), claims["jti"])
        )
        if row is None or row.client_id != client_id:
            raise InvalidRequestError("subject_token is not known to this server")
        if row.revoked_at is not None:
            raise InvalidRequestError("subject_token has been revoked")
        if row.expires_at <= utcnow():
            raise InvalidRequestError("subject_token has expired")
        bound = claims.get("cnf")
        if isinstance(bound, dict) and bound.get("jkt") != self.request.token_context.dpop_jkt:
            raise InvalidRequestError(
                "subject_token is bound to a DPoP key: send a DPoP proof made with that key "
                "(RFC 9449)"
            )
        return claims

    def _check_parameters(self) -> tuple[str, str, str]:
        """RFC 8693 §2.1 parameters: (subject_token, audience, branch_id)."""
        data = self.request.payload.data
        if data.get("actor_token") or data.get("actor_token_type"):
            raise InvalidRequestError("delegation (actor_token) is not supported")
        subject_token = self._param("subject_token")
        subject_token_type = self._param("subject_token_type")
        if subject_token_type != ACCESS_TOKEN_TYPE:
            raise InvalidRequestError(f"subject_token_type must be {ACCESS_TOKEN_TYPE}")
        requested = data.get("requested_token_type")
        if requested and requested != ACCESS_TOKEN_TYPE:
            raise InvalidRequestError(f"requested_token_type must be {ACCESS_TOKEN_TYPE}")
        return subject_token, self._param("audience"), self._param("branch_id")

    def _check_audience(self, client: Any, audience: str) -> None:
        """RFC 8693 §2.2.2 `invalid_target`: a known provider this client may use."""
        if self.request.payload.data.get("resource"):
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

    def _check_subject_scope(self, audience: str) -> None:
        """RFC 8693 §2.1/§2.2.2: the subject token itself must carry `upstream:<audience>`
        (what the client is registered for is not enough: a token minted with a narrower
        scope does not stand for this exchange). An unacceptable subject_token is
        `invalid_request` (§2.2.2)."""
        needed = UPSTREAM_SCOPE_PREFIX + audience
        if needed not in str(self.claims.get("scope") or "").split():
            raise InvalidRequestError(
                f"subject_token lacks scope {needed} (RFC 8693 2.2.2: an unacceptable "
                f"subject_token is invalid_request); request the token with scope={needed}"
            )

    def _credential(self, client_id: str, branch_id: str, audience: str) -> CredentialRow:
        """The branch's upstream grant, if the client may use the branch and the grant is
        connected and consented (`invalid_target`, `invalid_grant` otherwise)."""
        target = (
            self.prefetch.target
            if self.prefetch is not None
            else exchange_target(session_of(self.request), client_id, branch_id, audience)
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
        return credential

    def _check_fresh(
        self, credential: CredentialRow, client_id: str, branch_id: str, audience: str
    ) -> None:
        """Raise RefreshRequired when the stored upstream token is due for a refresh: less
        than `min_ttl` seconds left, or half its lifetime when the provider's tokens live
        shorter (`upstream.freshness`). Once refreshed, any remaining life will do."""
        now = utcnow()
        remaining = credential.access_expires_at - now
        fresh = not refresh_due(
            self.config.min_ttl, credential.access_expires_at, credential.access_issued_at, now
        )
        refreshed_now = self.request.token_context.upstream_refreshed
        if not fresh and not (refreshed_now and remaining > timedelta(seconds=0)):
            if refreshed_now:
                raise TemporarilyUnavailableError(
                    f"{audience} issued an already expired token; try again later"
                )
            raise RefreshRequired(credential.id, client_id, branch_id, audience)

    def validate_token_request(self) -> None:
        """RFC 8693 §2.1: authenticate the client, check the parameters, the subject
        token, the audience, the branch and its upstream grant, and the scope."""
        request = self.request
        client = self.authenticate_token_endpoint_client()
        request.client = client
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(
                "the client is not registered for the token-exchange grant type"
            )
        subject_token, audience, branch_id = self._check_parameters()
        self.claims = self._subject_claims(subject_token, client.client_id)
        self._check_audience(client, audience)
        self._check_subject_scope(audience)
        credential = self._credential(client.client_id, branch_id, audience)
        granted = credential.scope.split()
        beyond = [s for s in (request.payload.scope or "").split() if s not in granted]
        if beyond:
            raise InvalidScopeError(
                f"scope exceeds what branch '{branch_id}' granted at {audience}: "
                + printable(" ".join(beyond))
            )
        self._check_fresh(credential, client.client_id, branch_id, audience)
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
        writer_of(request).record(
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
