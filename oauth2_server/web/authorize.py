"""The authorization endpoint's pages: login and consent (RFC 6749 §4.1.1, §3.1).

GET shows the login page (no session), the consent page, or redirects at once when the
user already consented to the scopes. POST carries `action=login`, `action=consent` or
`action=logout` ("not you?": signs the session out, back to the login page for the same
request) plus a CSRF token bound to the session; the authorization request itself is always
read from the query string, so a form field cannot change it. Pages forbid framing and run
no script. Both pages name the client and where the browser will be sent (`redirect_target`);
the consent page describes each scope (OAUTH2_SCOPE_DESCRIPTIONS).
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from urllib.parse import urlencode, urlsplit

from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from oauth2_server.oauth.authorization import (
    Argon2Busy,
    AuthorizationPageError,
    ConsentPrompt,
    LoginThrottled,
)
from oauth2_server.oauth.bridge import OAuthRequest
from oauth2_server.oauth.par import session_key
from oauth2_server.oauth.server import OAuthService
from oauth2_server.registry.redirect_uris import loopback_host
from oauth2_server.web.forms import (
    BadRequest,
    oauth_request,
    parse_params,
    read_form,
    request_context,
)


class LoginSessionMiddleware:
    """Starlette's signed-cookie session, on the authorization endpoint only (the token,
    introspection and revocation endpoints never read cookies). Cookie: HttpOnly,
    SameSite=Lax, Secure outside development; signed with a key derived from the keyring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._wrapped: SessionMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._wrapped is None:
            self._wrapped = SessionMiddleware(self.app, **scope["app"].state.session_settings)
        await self._wrapped(scope, receive, send)


# RFC 6749 §4.1.2.1: error_description is %x20-21 / %x23-5B / %x5D-7E. Authlib echoes
# `redirect_uri` and `response_type` into its descriptions and cannot build an error holding
# other characters, so such values are answered before it sees them, on the error page:
# neither a redirect URI (an absolute URI, RFC 3986 §4.3: ASCII, no `"` or `\`) nor a
# response type can hold them, so the request is one that must not be redirected.
NOT_ERROR_TEXT = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
UNECHOABLE = {
    "redirect_uri": ("invalid_request", "redirect_uri is not a valid URI (RFC 3986)"),
    "response_type": ("unsupported_response_type", "response_type must be 'code'"),
}

SESSION_USER = "uid"
SESSION_CSRF = "csrf"
SESSION_PUSHED = "par"  # the pushed authorization request this browser is in (RFC 9126)
# The trusted-device cookie (oauth.authorization): signed, HttpOnly, SameSite=Lax, Secure
# outside development, sent to the authorization endpoint only.
DEVICE_COOKIE = "oauth2_device"


def _csrf_token(request: Request) -> str:
    token = request.session.get(SESSION_CSRF)
    if not token:
        token = secrets.token_urlsafe(32)
        request.session[SESSION_CSRF] = token
    return token


def _templates(request: Request) -> Jinja2Templates:
    return request.app.state.templates


def _page(request: Request, name: str, status: int = 200, **context: object) -> Response:
    return _templates(request).TemplateResponse(
        request, name, {"csrf_token": _csrf_token(request), **context}, status_code=status
    )


def _error_page(request: Request, error: str, description: str, status: int) -> Response:
    return _page(request, "error.html", status, error=error, description=description)


def redirect_target(redirect_uri: str) -> str:
    """Where the browser goes after the decision, as a person reads it: the host (with a
    non-default port) of an https or http redirect URI; "this device" for a loopback one
    (RFC 8252 §7.3, also `localhost`); "the app <scheme>" for a private-use scheme (RFC 8252
    §7.1: the app that claimed it). Text; the template escapes it."""
    parts = urlsplit(redirect_uri)
    if parts.scheme in {"http", "https"}:
        host = parts.netloc.rpartition("@")[2]
        if loopback_host(host) or parts.hostname in {"localhost", "127.0.0.1", "::1"}:
            return "this device"
        try:
            port = parts.port
        except ValueError:
            port = None
        hostname = parts.hostname or host
        return hostname if port is None else f"{hostname}:{port}"
    return f"the app {parts.scheme}" if parts.scheme else "the application"


def _login_page(
    request: Request, prompt: ConsentPrompt | None, status: int = 200, **context: object
) -> Response:
    return _page(
        request,
        "login.html",
        status,
        client_name=prompt.client_name if prompt else None,
        target=redirect_target(prompt.redirect_uri) if prompt else None,
        **context,
    )


async def _login_again(
    request: Request, service: OAuthService, oauth: OAuthRequest, status: int, error: str
) -> Response:
    """The login page after a refused attempt (wrong password, throttled, busy), still
    naming the client and the redirect target of the authorization request `oauth`."""
    prompt = None
    try:
        result, _user = await service.authorization.begin(oauth, None)
    except AuthorizationPageError:
        result = None
    if isinstance(result, ConsentPrompt):
        prompt = result
    return _login_page(request, prompt, status, error=error)


def _fresh_session(request: Request) -> None:
    """Empty the session (sign-in, sign-out) but for the pushed authorization request the
    browser is in (RFC 9126), which it can take from the database only once."""
    pushed = request.session.get(SESSION_PUSHED)
    request.session.clear()
    if pushed is not None:
        request.session[SESSION_PUSHED] = pushed


async def _sign_out(request: Request, service: OAuthService) -> Response:
    """The "not you?" form: end the session (a new CSRF token follows; audited
    `signed_out`) and show the login page for the same authorization request (303 to
    GET)."""
    await service.authorization.signed_out(
        request.session.get(SESSION_USER), request_context(request)
    )
    _fresh_session(request)
    return RedirectResponse(
        request.url.path + "?" + urlencode(parse_params(request.url.query), doseq=True),
        status_code=303,
    )


async def authorize(request: Request) -> Response:
    """GET/POST /oauth2/authorize."""
    service: OAuthService = request.app.state.oauth
    try:
        query = parse_params(request.url.query)
        form = (
            await read_form(request, service.settings.max_body_bytes)
            if (request.method == "POST")
            else {}
        )
    except BadRequest as exc:
        return _error_page(request, exc.error, exc.description, exc.status)
    for name, (error, description) in UNECHOABLE.items():
        if NOT_ERROR_TEXT.search(query.get(name, [""])[0]):
            return _error_page(request, error, description, 400)
    action = form.get("action", [""])[0]
    if request.method == "POST":
        presented = form.get("csrf_token", [""])[0]
        expected = request.session.get(SESSION_CSRF, "")
        if not expected or not hmac.compare_digest(presented.encode(), expected.encode()):
            return _error_page(
                request,
                "invalid_request",
                "the form expired or was not sent by this site; start again",
                400,
            )
    if action == "logout":
        return await _sign_out(request, service)
    pushed = await _pushed_parameters(request, service, query)
    if isinstance(pushed, Response):
        return pushed
    oauth = oauth_request(request, service.issuer, pushed, service.allow_http)
    oauth.token_context.pushed = "request_uri" in query
    force_consent = "consent" in query.get("prompt", [""])[0].split()
    try:
        if action == "login":
            return await _login(request, service, oauth, form)
        user_id = request.session.get(SESSION_USER)
        if action == "consent":
            if user_id is None:
                return _error_page(request, "login_required", "sign in first", 401)
            approved = form.get("decision", [""])[0] == "approve"
            return await service.authorization.finish(oauth, user_id, approved)
        result, user = await service.authorization.begin(oauth, user_id, force_consent)
    except AuthorizationPageError as exc:
        return _error_page(request, exc.error, exc.description, exc.status)
    if isinstance(result, Response):
        return result
    if user is None:
        request.session.pop(SESSION_USER, None)
        return _login_page(request, result)
    return _consent_page(request, service, result, user.username)


async def _pushed_parameters(
    request: Request, service: OAuthService, query: dict[str, list[str]]
) -> dict[str, list[str]] | Response:
    """The authorization request to act on (RFC 9126 §4): the query string, or with a
    `request_uri` the parameters pushed under it. The first use takes them from the
    database (once, `oauth.par`) into this browser's signed session, where the login and
    consent steps that follow on the same URL find them until they expire. Refusals are
    error pages, never redirects."""
    request_uri = query.get("request_uri", [None])[0]
    if request_uri is None:
        if service.settings.require_pushed_authorization_requests:
            return _error_page(
                request,
                "invalid_request",
                "this server accepts authorization requests only through "
                "/oauth2/par (RFC 9126 section 5)",
                400,
            )
        return query
    client_id = query.get("client_id", [""])[0]
    held = request.session.get(SESSION_PUSHED)
    key = session_key(request_uri)
    if held and held["key"] == key and held["client_id"] == client_id and held["exp"] > time.time():
        return held["params"]
    try:
        taken = await service.pushed.take(request_uri, client_id, request_context(request))
    except AuthorizationPageError as exc:
        return _error_page(request, exc.error, exc.description, exc.status)
    request.session[SESSION_PUSHED] = {
        "key": key,
        "client_id": client_id,
        "params": taken.parameters,
        "exp": taken.expires_at.timestamp(),
    }
    return taken.parameters


def _consent_page(
    request: Request, service: OAuthService, prompt: ConsentPrompt, username: str
) -> Response:
    described = dict(service.settings.scope_descriptions)
    return _page(
        request,
        "consent.html",
        client_name=prompt.client_name,
        scopes=[(scope, described.get(scope)) for scope in prompt.scopes],
        target=redirect_target(prompt.redirect_uri),
        username=username,
    )


async def _login(
    request: Request, service: OAuthService, oauth: OAuthRequest, form: dict[str, list[str]]
) -> Response:
    """The login form: 401 on a wrong password, 429 with Retry-After over a login limit,
    503 with Retry-After when the argon2 queue is full; on success a fresh session and a
    new trusted-device cookie for this username."""
    username = form.get("username", [""])[0]
    password = form.get("password", [""])[0]
    context = oauth.context
    flow = service.authorization
    device = flow.trusted_device(request.cookies.get(DEVICE_COOKIE), username)
    try:
        user = (
            await flow.login(username, password, context, device) if username and password else None
        )
    except LoginThrottled as exc:
        response = await _login_again(
            request, service, oauth, 429, "Too many attempts; try again later."
        )
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except Argon2Busy as exc:
        response = await _login_again(
            request, service, oauth, 503, "The server is busy; try again in a moment."
        )
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if user is None:
        return await _login_again(request, service, oauth, 401, "Wrong username or password.")
    # A fresh session on sign-in: new CSRF token, nothing carried over.
    _fresh_session(request)
    request.session[SESSION_USER] = user.id
    _csrf_token(request)
    response = RedirectResponse(
        request.url.path + "?" + urlencode(parse_params(request.url.query), doseq=True),
        status_code=303,
    )
    response.set_cookie(
        DEVICE_COOKIE,
        flow.device_cookie(user.username),
        max_age=flow.device_ttl,
        path=request.url.path,
        secure=service.settings.production,
        httponly=True,
        samesite="lax",
    )
    return response
