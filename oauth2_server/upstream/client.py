"""This server as an OAuth client of an upstream provider, over async httpx.

RFC 6749 §4.1.3 (code exchange, with the RFC 7636 verifier), §6 (refresh), RFC 7009
(revocation) and OIDC Core §5.3 (userinfo). Client authentication is
`client_secret_post`, which Google and Microsoft both accept.

Every call has one overall deadline (`asyncio.timeout`) covering connecting, sending,
the headers and the whole body, so a provider trickling its answer cannot hold a call
longer than that: OAUTH2_UPSTREAM_TIMEOUT, or OAUTH2_UPSTREAM_REFRESH_CAP for a refresh
(which runs on in the background after its caller's deadline; `upstream.refresh`).
httpx's own per-phase timeout is only a backstop at the longer of the two.

Failures come in two kinds, because they mean different things to the caller:
- `UpstreamUnavailable`: timeout, connection error, HTTP 5xx or an unreadable answer.
  Nothing is known about the grant; try again later.
- `UpstreamRejected`: the provider answered with an RFC 6749 §5.2 error (`invalid_grant`
  on refresh means the grant is gone and a new consent is needed).

No message carries a token; provider error descriptions are cut to 200 characters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import httpx

from oauth2_server.upstream.providers import Provider

log = logging.getLogger(__name__)


class UpstreamUnavailable(Exception):
    """The provider did not give a usable answer (timeout, network, 5xx, malformed)."""


class UpstreamRejected(Exception):
    """The provider refused the request with an OAuth error (`error`, `description`)."""

    def __init__(self, error: str, description: str, status: int) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True)
class TokenResponse:
    """A successful token endpoint answer (RFC 6749 §5.1).

    `expires_in` is seconds from now, as the provider said (never assumed). `scope` is
    None when the provider omitted it (then it equals the request's, §5.1).
    """

    access_token: str
    expires_in: int
    refresh_token: str | None
    scope: str | None
    id_token: str | None

    def __repr__(self) -> str:  # never show tokens in logs or tracebacks
        return f"TokenResponse(expires_in={self.expires_in}, scope={self.scope!r})"


def _short(text: Any) -> str:
    return str(text or "")[:200]


def parse_token_response(body: Any) -> TokenResponse:
    """Validate a token endpoint JSON body. Raises UpstreamUnavailable when it lacks an
    access token or a positive integer `expires_in`, or has a non-Bearer `token_type`."""
    if not isinstance(body, dict):
        raise UpstreamUnavailable("token endpoint answered with a non-object JSON body")
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise UpstreamUnavailable("token endpoint answer has no access_token")
    token_type = body.get("token_type")
    if token_type is not None and str(token_type).lower() != "bearer":
        raise UpstreamUnavailable(f"token endpoint issued token_type {_short(token_type)!r}")
    try:
        expires_in = int(body.get("expires_in"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UpstreamUnavailable("token endpoint answer has no valid expires_in") from None
    if expires_in <= 0:
        raise UpstreamUnavailable("token endpoint answer has a non-positive expires_in")
    refresh_token = body.get("refresh_token")
    scope = body.get("scope")
    id_token = body.get("id_token")
    return TokenResponse(
        access_token=access_token,
        expires_in=expires_in,
        refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else None,
        scope=" ".join(scope.split()) if isinstance(scope, str) else None,
        id_token=id_token if isinstance(id_token, str) and id_token else None,
    )


class UpstreamClient:
    """Calls to providers' token, revocation and userinfo endpoints (one httpx client,
    connection pooling): `timeout` seconds per call overall, `refresh_cap` for a refresh
    (default `timeout`)."""

    def __init__(
        self,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
        refresh_cap: float | None = None,
    ) -> None:
        self.timeout = timeout
        self.refresh_cap = refresh_cap if refresh_cap is not None else timeout
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(max(timeout, self.refresh_cap)),
            follow_redirects=False,
            transport=transport,
            headers={"Accept": "application/json"},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    @staticmethod
    async def _send(
        label: str, request: Awaitable[httpx.Response], deadline: float
    ) -> httpx.Response:
        """The whole answer to `request` (body included) within `deadline` seconds;
        UpstreamUnavailable naming `label` (the provider, or its userinfo endpoint) past
        it, on httpx's own timeout or a network error."""
        try:
            async with asyncio.timeout(deadline):
                return await request
        except (TimeoutError, httpx.TimeoutException):
            raise UpstreamUnavailable(f"{label} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(
                f"{label} could not be reached ({type(exc).__name__})"
            ) from None

    async def _post(
        self, provider: Provider, url: str, data: dict[str, str], deadline: float | None = None
    ) -> httpx.Response:
        data = {**data, "client_id": provider.client_id, "client_secret": provider.client_secret}
        response = await self._send(
            provider.name, self._http.post(url, data=data), deadline or self.timeout
        )
        if response.status_code >= 500:
            raise UpstreamUnavailable(f"{provider.name} answered HTTP {response.status_code}")
        return response

    def _token_answer(self, provider: Provider, response: httpx.Response) -> TokenResponse:
        try:
            body = response.json()
        except ValueError:
            raise UpstreamUnavailable(
                f"{provider.name} token endpoint answered HTTP {response.status_code} without JSON"
            ) from None
        if response.status_code != 200:
            error = body.get("error") if isinstance(body, dict) else None
            if not isinstance(error, str):
                raise UpstreamUnavailable(
                    f"{provider.name} token endpoint answered HTTP {response.status_code}"
                )
            raise UpstreamRejected(
                _short(error), _short(body.get("error_description")), response.status_code
            )
        return parse_token_response(body)

    async def exchange_code(
        self, provider: Provider, code: str, redirect_uri: str, code_verifier: str
    ) -> TokenResponse:
        """RFC 6749 §4.1.3 with RFC 7636 §4.5 `code_verifier`."""
        response = await self._post(
            provider,
            provider.token_endpoint,
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": code_verifier,
            },
        )
        return self._token_answer(provider, response)

    async def refresh(self, provider: Provider, refresh_token: str) -> TokenResponse:
        """RFC 6749 §6, within `refresh_cap` seconds overall. Raises UpstreamRejected
        (`invalid_grant`: consent needed) or UpstreamUnavailable."""
        response = await self._post(
            provider,
            provider.token_endpoint,
            {"grant_type": "refresh_token", "refresh_token": refresh_token},
            self.refresh_cap,
        )
        return self._token_answer(provider, response)

    async def revoke(self, provider: Provider, token: str) -> bool:
        """RFC 7009 §2.1 revocation of a refresh token (Google revokes the whole grant).

        Returns False when the provider has no revocation endpoint. Raises
        UpstreamUnavailable or UpstreamRejected (an already invalid token is success:
        Google answers 400 `invalid_token` for it).
        """
        if provider.revocation_endpoint is None:
            return False
        response = await self._post(
            provider,
            provider.revocation_endpoint,
            {"token": token, "token_type_hint": "refresh_token"},
        )
        if response.status_code == 200:
            return True
        try:
            body = response.json()
        except ValueError:
            body = {}
        error = body.get("error") if isinstance(body, dict) else None
        if error in {"invalid_token", "invalid_grant"}:
            return True
        raise UpstreamRejected(
            _short(error or f"HTTP {response.status_code}"),
            _short(body.get("error_description") if isinstance(body, dict) else ""),
            response.status_code,
        )

    async def userinfo(self, provider: Provider, access_token: str) -> dict[str, Any]:
        """OIDC Core §5.3 claims of the connected account (`sub`, `email`)."""
        if provider.userinfo_endpoint is None:
            raise UpstreamUnavailable(f"{provider.name} has no userinfo endpoint configured")
        response = await self._send(
            f"{provider.name} userinfo",
            self._http.get(
                provider.userinfo_endpoint, headers={"Authorization": f"Bearer {access_token}"}
            ),
            self.timeout,
        )
        if response.status_code != 200:
            raise UpstreamUnavailable(
                f"{provider.name} userinfo answered HTTP {response.status_code}"
            )
        try:
            claims = response.json()
        except ValueError:
            raise UpstreamUnavailable(f"{provider.name} userinfo answered without JSON") from None
        if not isinstance(claims, dict):
            raise UpstreamUnavailable(f"{provider.name} userinfo answered a non-object")
        return claims
