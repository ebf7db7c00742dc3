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
    request: Request,
    status: int,
    result: ConnectResult | None = None,
    error: str | None = None,
    description: str | None = None,
) -> Response:
    if "application/json" in request.headers.get("accept", ""):
        body: dict[str, Any]
        if result is not None:
            body = {
                "branch_id": result.branch_id,
                "provider": result.provider,
                "account_email": result.account_email,
                "scope": result.scope,
                "expires_at": int(result.access_expires_at.timestamp()),
                "reused_grant": result.reused_grant,
                "branches": result.branches,
            }
        else:
            body = {"error": error, "error_description": description}
        return JSONResponse(body, status_code=status, headers=NO_STORE)
    return request.app.state.templates.TemplateResponse(
        request,
        "upstream_result.html",
        {"result": result, "error": error, "description": description},
        status_code=status,
        headers=NO_STORE,
    )


async def callback(request: Request) -> Response:
    """Finish connecting a branch: check `state`, exchange `code`, store the grant."""
    upstream: UpstreamService = request.app.state.oauth.upstream
    try:
        params = {k: v[0] for k, v in parse_params(request.url.query).items()}
    except BadRequest as exc:
        return _answer(request, exc.status, error=exc.error, description=exc.description)
    try:
        result = await upstream.finish_connection(
            request.path_params["provider"], params, request_context(request)
        )
    except ConnectError as exc:
        return _answer(request, exc.status, error=exc.error, description=str(exc))
    return _answer(request, 200, result=result)
