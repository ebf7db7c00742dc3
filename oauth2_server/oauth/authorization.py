"""The authorization endpoint's half of the service: login, consent and the code
redirect (RFC 6749 §4.1, RFC 7636, RFC 9207).

`AuthorizationFlow` is what the HTML pages (web/authorize.py) call. It validates the
authorization request through Authlib inside the bridge (one transaction per request),
remembers a user's consent per client and scope, and checks passwords with argon2id off the
event loop (bounded: `Argon2Slots`), at the same cost for unknown users. Every redirect
back to the client carries `iss` (RFC 9207 §2). Requests that must not be redirected
(unknown client, unregistered `redirect_uri`: RFC 6749 §4.1.2.1, RFC 9700 §4.1.3) raise
`AuthorizationPageError`.

Login throttling (OWASP "device cookies"; RFC 6749 §10.10 asks to limit guessing): an attempt
is counted BEFORE its argon2 work, per IP, per (username, IP) and per username, or, when the
browser presents a valid trusted-device cookie for that username, per device cookie only;
a correct password gives the attempt back. So a guesser elsewhere can exhaust the
username's budget for browsers without the cookie, but never locks the user out of a
browser they signed in with before. Refusals are audited (`login_throttled`, summarised
per key and window by `RefusalLog`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import secrets
from dataclasses import InitVar, dataclass, field
from typing import Any

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749 import AuthorizationServer, OAuth2Error
from itsdangerous import BadData, URLSafeTimedSerializer
from starlette.responses import Response

from oauth2_server.audit.bounds import unknown_username_subject
from oauth2_server.audit.log import AuditBuffer, AuditEvent, record
from oauth2_server.audit.risk import AuthFailureWindow, auth_failure, fixed_score
from oauth2_server.crypto.hashing import hash_secret
from oauth2_server.oauth.bridge import Bridge, OAuthRequest
from oauth2_server.oauth.clients import Argon2Busy, Argon2Slots
from oauth2_server.oauth.throttling import FailureLimiter, RefusalLog
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


def _commit_refusals(request: OAuthRequest) -> None:
    """Write the refusal rows a grant queued (e.g. `resource_refused`, RFC 8707) in the
    request's transaction, which commits with the error redirect."""
    for event in request.token_context.refusals:
        record(request.db, event)
    request.token_context.refusals.clear()


__all__ = ["Argon2Busy", "AuthorizationFlow", "AuthorizationPageError", "LoginThrottled"]

MAX_USERNAME_LENGTH = 200  # the oauth2_users.username column


class LoginThrottled(Exception):
    """Too many login attempts for this IP, username, pair or device; `retry_after` s."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(eq=False)
class AuthorizationFlow:
    """Login, consent and code issuance for `/oauth2/authorize`.

    `server` is the Authlib server holding the authorization-code grant; `argon2` checks
    password hashes off the event loop (bounded queue); `limiter` throttles logins and
    `refusals` audits its refusals; `failures_by_ip` scores failed logins (shared with
    client authentication); failed logins go to `audit_buffer` (read-only events,
    batched). `device_key` (32 bytes) signs trusted-device cookies, valid `device_ttl`
    seconds.
    """

    server: AuthorizationServer
    bridge: Bridge
    issuer: str
    argon2: Argon2Slots
    limiter: FailureLimiter
    refusals: RefusalLog
    failures_by_ip: AuthFailureWindow
    audit_buffer: AuditBuffer
    device_key: InitVar[bytes]
    device_ttl: int
    # HMAC key of `audit.bounds.unknown_username_subject` (failed sign-ins, unknown users).
    unknown_user_key: bytes = field(repr=False, default=b"")
    _device_key: bytes = field(init=False, repr=False)
    _devices: URLSafeTimedSerializer = field(init=False, repr=False)

    def __post_init__(self, device_key: bytes) -> None:
        self._device_key = device_key
        self._devices = URLSafeTimedSerializer(device_key, salt="oauth2-server device cookie")

    def _redirect(self, response: Response) -> Response:
        """Add RFC 9207 `iss` to every redirect back to the client, success or error."""
        location = response.headers.get("location")
        if location:
            response.headers["location"] = add_params_to_uri(location, [("iss", self.issuer)])
        return response

    def _consent_grant(self, request: OAuthRequest, user: UserRecord | None) -> Any:
        """The validated authorization request's grant, an error redirect, or
        AuthorizationPageError; a client registered with
        `require_pushed_authorization_requests` must have pushed it (RFC 9126 §6)."""
        try:
            grant = self.server.get_consent_grant(request, end_user=user)
        except OAuth2Error as error:
            if error.redirect_uri:
                _commit_refusals(request)
                return self._redirect(self.server.handle_error_response(request, error))
            raise AuthorizationPageError(
                error.error, error.get_error_description() or error.error
            ) from None
        record = request.client.record
        if record.require_pushed_authorization_requests and not request.token_context.pushed:
            raise AuthorizationPageError(
                "invalid_request",
                "this client sends its authorization requests through /oauth2/par "
                "(RFC 9126 section 6)",
            )
        return grant

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
        `access_denied`, as a 302 to the client with `iss`. The decision is audited
        (`consent_granted` / `consent_denied`, with the scopes) in its transaction."""

        def call() -> Response:
            user = get_user(request.db, user_id)
            if user is None or not user.active:
                raise AuthorizationPageError("login_required", "sign in again", 401)
            grant = self._consent_grant(request, user)
            if isinstance(grant, Response):
                return grant
            scopes = sorted(set((request.scope or "").split()))
            record(
                request.db,
                AuditEvent(
                    "consent_granted" if approved else "consent_denied",
                    request.context,
                    client_id=request.client.client_id,
                    subject=user.subject,
                    details={"scopes": scopes},
                ),
            )
            if approved:
                remember_consent(request.db, user.id, request.client.client_id, set(scopes))
                return self._issue_code(request, grant, user)
            return self._issue_code(request, grant, None)

        return await self.bridge.run(request, call)

    async def signed_out(self, user_id: Any, context: Any) -> None:
        """Audit the end of a sign-in session (`signed_out`, naming the user's subject when
        the session named a user that still exists)."""
        if not isinstance(user_id, int):
            return
        user = await self.bridge.read(lambda db: get_user(db, user_id))
        self.audit_buffer.add(
            AuditEvent("signed_out", context, subject=user.subject if user else None)
        )

    # -- trusted-device cookies (OWASP "Slow Down Online Guessing Attacks with Device
    # Cookies"): signed, naming the user only by a keyed digest ----------------------------

    def _user_digest(self, username: str) -> str:
        return hmac.new(self._device_key, username.encode(), hashlib.sha256).hexdigest()[:32]

    def device_cookie(self, username: str) -> str:
        """A new signed trusted-device cookie value for `username` (issued at sign-in)."""
        return self._devices.dumps([self._user_digest(username), secrets.token_urlsafe(16)])

    def trusted_device(self, cookie: str | None, username: str) -> str | None:
        """The device id of a valid, unexpired cookie issued for `username`, else None."""
        if not cookie or len(cookie) > 512:
            return None
        try:
            digest, device = self._devices.loads(cookie, max_age=self.device_ttl)
        except (BadData, ValueError, TypeError):
            return None
        if not isinstance(device, str) or not hmac.compare_digest(
            str(digest), self._user_digest(username)
        ):
            return None
        return device

    def _login_keys(self, username: str, ip: str | None, device: str | None) -> dict[str, str]:
        if device is not None:
            return {"login-device": device}
        ip = ip or "-"
        return {"login-ip": ip, "login-user-ip": f"{username}\0{ip}", "login-user": username}

    async def login(
        self, username: str, password: str, context: Any, device: str | None = None
    ) -> UserRecord | None:
        """Check a user's password (argon2id off the loop, constant work for unknown users).

        The attempt is counted first (module docstring: per device when `device`, the id
        from `trusted_device`, is given; else per IP, (username, IP) and username) and
        given back on success. Returns the active user (audited `login_succeeded`), or None
        (audited `login_failed`; a username no user has is recorded as its keyed digest,
        `audit.bounds.unknown_username_subject`).
        Raises LoginThrottled over a limit (audited `login_throttled`) and Argon2Busy when
        this worker's argon2 queue is full.
        """
        attempt = await self.limiter.count(self._login_keys(username, context.ip, device))
        if attempt.refused:
            self.refusals.refused(
                attempt.blocked_hash or "login",
                attempt.wait,
                AuditEvent(
                    "login_throttled",
                    context,
                    risk_score=fixed_score("client_auth_throttled"),
                    flags=["throttled"],
                    details={"limited_by": attempt.blocked_by},
                ),
            )
            raise LoginThrottled(attempt.retry_after)
        user = None
        if 0 < len(username) <= MAX_USERNAME_LENGTH and username.isprintable():
            user = await self.bridge.read(lambda db: get_user_by_username(db, username))
            stored = (
                user.password_hash
                if user is not None
                else await asyncio.to_thread(_dummy_password_hash)
            )
            try:
                ok = await self.argon2.verify(stored, password)
            except Argon2Busy:
                await self.limiter.release(attempt)
                self.refusals.refused(
                    "argon2-busy",
                    self.limiter.window,
                    AuditEvent("argon2_busy", context, flags=["busy"]),
                )
                raise
            if ok and user is not None and user.active:
                await self.limiter.release(attempt)
                self.audit_buffer.add(
                    AuditEvent(
                        "login_succeeded",
                        context,
                        subject=user.subject,
                        details={"trusted_device": device is not None},
                    )
                )
                return user
        self._failed_login(username, user, context, device)
        return None

    def _failed_login(
        self, username: str, user: UserRecord | None, context: Any, device: str | None
    ) -> None:
        """Audit `login_failed` (batched), scored by the IP's recent failures; a username
        no user has is named by its keyed digest (`unknown_username_subject`)."""
        risk = auth_failure("login_failed", self.failures_by_ip.add(context.ip))
        subject = user.subject if user else None
        if user is None and self.unknown_user_key and 0 < len(username) <= MAX_USERNAME_LENGTH:
            subject = unknown_username_subject(self.unknown_user_key, username)
        self.audit_buffer.add(
            AuditEvent(
                "login_failed",
                context,
                subject=subject,
                risk_score=risk.score,
                flags=risk.flags,
                details={"trusted_device": device is not None},
            )
        )
