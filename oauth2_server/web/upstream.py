"""`GET /upstream/{provider}/callback`: where a provider sends the admin's browser back
after a branch's consent (RFC 6749 §4.1.2, this server being the client).

The page says what happened; with `Accept: application/json` the answer is JSON
(`{"branch_id", "provider", "account_email", "scope", …}` or an RFC 6749 §5.2 shaped
error). Either way `Cache-Control: no-store`.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from oauth2_server.upstream.connect import ConnectError
from oauth2_server.upstream.service import ConnectResult, UpstreamService
from oauth2_server.web.forms import BadRequest, parse_params, request_context

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _answer(
    request: Request, status: int, body: dict[str, Any], result: ConnectResult | None = None
) -> Response:
    """`body` as JSON when the browser asks for it, else the result page (`result` on
    success; the error and its description from `body` otherwise); never cached."""
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(body, status_code=status, headers=NO_STORE)
    return request.app.state.templates.TemplateResponse(
        request,
        "upstream_result.html",
        {
            "result": result,
            "error": body.get("error"),
            "description": body.get("error_description"),
        },
        status_code=status,
        headers=NO_STORE,
    )


def _error(request: Request, status: int, error: str, description: str) -> Response:
    """An RFC 6749 §5.2 shaped refusal (JSON, or the result page saying why)."""
    return _answer(request, status, {"error": error, "error_description": description})


def _connected(request: Request, result: ConnectResult) -> Response:
    """The branch is connected: what was stored (never a token); `expires_at` epoch s."""
    body = {
        "branch_id": result.branch_id,
        "provider": result.provider,
        "account_email": result.account_email,
        "scope": result.scope,
        "expires_at": int(result.access_expires_at.timestamp()),
        "reused_grant": result.reused_grant,
        "branches": result.branches,
    }
    return _answer(request, 200, body, result)


async def callback(request: Request) -> Response:
    """Finish connecting a branch: check `state`, exchange `code`, store the grant."""
    upstream: UpstreamService = request.app.state.oauth.upstream
    try:
        params = {k: v[0] for k, v in parse_params(request.url.query).items()}
    except BadRequest as exc:
        return _error(request, exc.status, exc.error, exc.description)
    try:
        result = await upstream.finish_connection(
            request.path_params["provider"], params, request_context(request)
        )
    except ConnectError as exc:
        return _error(request, exc.status, exc.error, str(exc))
    return _connected(request, result)
