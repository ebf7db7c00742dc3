"""Token (RFC 6749 §3.2), introspection (RFC 7662), revocation (RFC 7009) and pushed
authorization requests (RFC 9126) over HTTP.

Parameters come from the POST body only, never the query string (DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from oauth2_server.logs import note_client
from oauth2_server.oauth.authlib_server import oauth_error_response
from oauth2_server.oauth.bridge import OAuthRequest
from oauth2_server.oauth.server import OAuthService
from oauth2_server.web.forms import BadRequest, oauth_request, read_form


def _service(request: Request) -> OAuthService:
    return request.app.state.oauth


async def _handle(
    request: Request, call: Callable[[OAuthService, OAuthRequest], Awaitable[Response]]
) -> Response:
    service = _service(request)
    if request.method != "POST":
        return oauth_error_response(
            "invalid_request", "this endpoint accepts POST only", 405, {"Allow": "POST"}
        )
    try:
        params = await read_form(request, service.settings.max_body_bytes)
    except BadRequest as exc:
        return oauth_error_response(exc.error, exc.description, exc.status)
    oauth = oauth_request(request, service.issuer, params, service.allow_http)
    response = await call(service, oauth)
    if oauth.client is not None:  # authenticated (RFC 6749 §2.3): named in the access line
        note_client(request.state, oauth.client.client_id)
    return response


async def token(request: Request) -> Response:
    """POST /oauth2/token: every grant; responses carry Cache-Control: no-store."""
    return await _handle(request, lambda service, req: service.token(req))


async def introspect(request: Request) -> Response:
    """POST /oauth2/introspect (and /introspect): RFC 7662 §2."""
    return await _handle(request, lambda service, req: service.introspect(req))


async def pushed_authorization_request(request: Request) -> Response:
    """POST /oauth2/par: RFC 9126 §2."""
    return await _handle(request, lambda service, req: service.push_authorization_request(req))


async def revoke(request: Request) -> Response:
    """POST /oauth2/revoke: RFC 7009 §2."""
    return await _handle(request, lambda service, req: service.revoke(req))
