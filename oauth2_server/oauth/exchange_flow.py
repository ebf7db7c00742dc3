"""RFC 8693 token exchange, the async half (the grant is `oauth.token_exchange`).

`TokenExchange` reads what the grant needs in one statement (`ExchangeReader`), runs the
grant through the bridge, and when the grant raises `RefreshRequired` has
`UpstreamService.ensure_fresh` refresh the branch's upstream grant (own transaction, row
lock) before running the grant once more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749 import InvalidGrantError, OAuth2Error
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from starlette.responses import Response

from oauth2_server.oauth.bridge import OAuthRequest
from oauth2_server.oauth.token_exchange import (
    RefreshRequired,
    ServerError,
    TemporarilyUnavailableError,
    TokenExchangeConfig,
    reconnect_hint,
)
from oauth2_server.storage.protocols import ExchangeReader
from oauth2_server.upstream.service import (
    CredentialGone,
    NeedsConsent,
    RefreshMisconfigured,
    RefreshUnavailable,
    UpstreamService,
    printable,
)

AuthenticatedCall = Callable[..., Awaitable[Response]]


def claimed_client_id(request: OAuthRequest) -> str | None:
    """The client id the request names (HTTP Basic, else the body), before authentication."""
    try:
        client_id, _ = extract_basic_authorization(request.headers)
    except UnicodeDecodeError:
        return None
    return client_id or request.form.get("client_id")


@dataclass(eq=False)
class TokenExchange:
    """The async half: read what the grant needs in one statement, run the grant (on the
    bridge's deferred-write path when that read succeeded: no session, the `exchanged`
    audit row written in one statement); if the grant needs a fresh upstream token,
    refresh through `UpstreamService.ensure_fresh` (own transaction, row lock) and run
    the grant again.

    `server` is the Authlib server the grant is registered on (for its error responses);
    `reader` the hot path's `ExchangeReader` (the bridge's FastStore).
    """

    server: Any
    upstream: UpstreamService
    config: TokenExchangeConfig
    reader: ExchangeReader

    async def _prefetch(self, request: OAuthRequest) -> bool:
        """Read the subject token's row and the target up front; True if done."""
        form = request.form
        subject, branch_id = form.get("subject_token", ""), form.get("branch_id")
        audience, client_id = form.get("audience"), claimed_client_id(request)
        if not (branch_id and audience and client_id):
            return False
        if subject.count(".") != 2:
            return False
        claims = self.config.codec.decode(subject)
        if claims is None:
            return False
        request.token_context.exchange = await self.reader.prefetch_exchange(
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
            request.token_context.upstream_refreshed = True
            try:
                return await self._run(request, call)
            except RefreshRequired:
                error = TemporarilyUnavailableError(
                    f"branch '{need.branch_id}' could not be refreshed; try again later"
                )
        return self.server.handle_error_response(request, error)
