"""The authorization endpoint's half of the service: login, consent and the code
redirect (RFC 6749 §4.1, RFC 7636, RFC 9207).

`AuthorizationFlow` is what the HTML pages (web/authorize.py) call. It validates the
authorization request through Authlib inside the bridge (one transaction per request),
remembers a user's consent per client and scope, and checks passwords with argon2id off the
event loop, at the same cost for unknown users. Every redirect back to the client carries
`iss` (RFC 9207 §2). Requests that must not be redirected (unknown client, unregistered
`redirect_uri`: RFC 6749 §4.1.2.1, RFC 9700 §4.1.3) raise `AuthorizationPageError`.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass
from typing import Any

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749 import AuthorizationServer, OAuth2Error
from starlette.responses import Response

from oauth2_server.audit import AuditBuffer, AuditEvent
from oauth2_server.crypto.hashing import hash_secret
from oauth2_server.oauth.bridge import Bridge, OAuthRequest
from oauth2_server.oauth.clients import FailureLimiter, SecretVerifier
from oauth2_server.risk import AuthFailureWindow, auth_failure
from oauth2_server.storage.users import (
    UserRecord,
    consented_scopes,
    get_user,
    get_user_by_username,
    remember_consent,
)


@functools.cache
def _dummy_password_hash() -> str:
    """An argon2id hash of a random string: verifying against it when a username is unknown
    makes a failed login cost the same whether or not the user exists."""
    return hash_secret(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class ConsentPrompt:
    """A valid authorization request that needs the user (login or consent page)."""

    client_id: str
    client_name: str
    scopes: list[str]
    redirect_uri: str


class AuthorizationPageError(Exception):
    """An authorization request that must not redirect (unknown client, bad redirect_uri):
    show `description` on an error page with `status` (RFC 6749 §4.1.2.1)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


class LoginThrottled(Exception):
    """Too many failed logins for this username or IP; `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


class AuthorizationFlow:
    """Login, consent and code issuance for `/oauth2/authorize`.

    `server` is the Authlib server holding the authorization-code grant; `verifier` checks
    argon2id password hashes off the event loop; `failures` and `failures_by_ip` throttle
    and score failed logins (shared with client authentication's IP window); failed logins
    go to `audit_buffer` (read-only events, batched).
    """

    def __init__(
        self,
        server: AuthorizationServer,
        bridge: Bridge,
        issuer: str,
        verifier: SecretVerifier,
        failures: FailureLimiter,
        failures_by_ip: AuthFailureWindow,
        audit_buffer: AuditBuffer,
    ) -> None:
        self.server = server
        self.bridge = bridge
        self.issuer = issuer
        self.verifier = verifier
        self.failures = failures
        self.failures_by_ip = failures_by_ip
        self.audit_buffer = audit_buffer

    def _redirect(self, response: Response) -> Response:
        """Add RFC 9207 `iss` to every redirect back to the client, success or error."""
        location = response.headers.get("location")
        if location:
            response.headers["location"] = add_params_to_uri(location, [("iss", self.issuer)])
        return response

    def _consent_grant(self, request: OAuthRequest, user: UserRecord | None) -> Any:
        try:
            return self.server.get_consent_grant(request, end_user=user)
        except OAuth2Error as error:
            if error.redirect_uri:
                return self._redirect(self.server.handle_error_response(request, error))
            raise AuthorizationPageError(
                error.error, error.get_error_description() or error.error
            ) from None

    def _issue_code(self, request: OAuthRequest, grant: Any, user: UserRecord | None) -> Response:
        return self._redirect(
            self.server.create_authorization_response(request, grant_user=user, grant=grant)
        )

    async def begin(
        self, request: OAuthRequest, user_id: int | None, force_consent: bool = False
    ) -> tuple[ConsentPrompt | Response, UserRecord | None]:
        """Validate an authorization request for the signed-in user (or nobody).

        Returns (ConsentPrompt, user) when the login or consent page is needed, or
        (302 Response, user) when done: an error redirect, or a code because the user
        already consented to these scopes. Raises AuthorizationPageError when the request
        must not be redirected.
        """

        def call() -> tuple[ConsentPrompt | Response, UserRecord | None]:
            user = get_user(request.db, user_id) if user_id is not None else None
            if user is not None and not user.active:
                user = None
            grant = self._consent_grant(request, user)
            if isinstance(grant, Response):
                return grant, user
            client = request.client
            scopes = (request.scope or "").split()
            remembered = (
                user is not None
                and not force_consent
                and set(scopes) <= consented_scopes(request.db, user.id, client.client_id)
            )
            if remembered:
                return self._issue_code(request, grant, user), user
            return ConsentPrompt(
                client.client_id, client.record.name, scopes, grant.redirect_uri
            ), user

        return await self.bridge.run(request, call)

    async def finish(self, request: OAuthRequest, user_id: int, approved: bool) -> Response:
        """The user's decision on the consent page: a code (remembering the consent) or
        `access_denied`, as a 302 to the client with `iss`."""

        def call() -> Response:
            user = get_user(request.db, user_id)
            if user is None or not user.active:
                raise AuthorizationPageError("login_required", "sign in again", 401)
            grant = self._consent_grant(request, user)
            if isinstance(grant, Response):
                return grant
            if approved:
                remember_consent(
                    request.db,
                    user.id,
                    request.client.client_id,
                    set((request.scope or "").split()),
                )
                return self._issue_code(request, grant, user)
            return self._issue_code(request, grant, None)

        return await self.bridge.run(request, call)

    async def login(self, username: str, password: str, context: Any) -> UserRecord | None:
        """Check a user's password (argon2id off the loop, constant work for unknown users).

        Returns the active user, or None. Failed attempts are audited (`login_failed`) and
        count toward the same failure limit as clients; raises `LoginThrottled` over it.
        """
        keys = (f"user:{username}", f"ip:{context.ip}")
        wait = self.failures.blocked(*keys)
        if wait > 0:
            raise LoginThrottled(int(wait) + 1)
        user = await self.bridge.read(lambda db: get_user_by_username(db, username))
        stored = user.password_hash if user is not None else _dummy_password_hash()
        ok = await self.verifier.check(stored, password)
        if ok and user is not None and user.active:
            return user
        self.failures.fail(*keys)
        risk = auth_failure("login_failed", self.failures_by_ip.add(context.ip))
        self.audit_buffer.add(
            AuditEvent(
                "login_failed",
                context,
                subject=user.subject if user else None,
                risk_score=risk.score,
                flags=risk.flags,
            )
        )
        return None
