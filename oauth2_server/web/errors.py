"""Exception → response, for the whole app (registered once in `app.create_app`).

DESIGN.md invariants 8 and 11: no input produces a 5xx, a traceback or a `text/plain`
answer, and a database outage answers 503 `temporarily_unavailable` with `Retry-After`.
Endpoints answer their own RFC errors (RFC 6749 §5.2 JSON, the admin API's JSON, the
authorization endpoint's HTML error page); what reaches these handlers is what no endpoint
answered:

- `HTTPException` (Starlette's 404 for an unknown path, 405 for a wrong method, with
  `Allow`): RFC 6749 §5.2-shaped JSON `{"error", "error_description"}`;
- `DatabaseUnavailable` (storage.errors): 503 `temporarily_unavailable` (RFC 6749
  §4.1.2.1's code for "cannot handle the request now") with `Retry-After` (RFC 9110
  §10.2.3) in seconds; the outage is logged once by `Availability`, not per request;
- anything else (`LastResort`, see there why it is a middleware): 500 `server_error`
  without details; one ERROR line naming the exception class, route and request id; the
  traceback only at DEBUG. A driver error that means an outage but escaped the storage
  layer's mapping still answers 503.

Answers are JSON with `Cache-Control: no-store`, except on the authorization endpoint,
whose users are browsers: there the same error is the HTML error page (RFC 6749 §4.1.2.1:
never a redirect).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oauth2_server.storage.errors import Availability, DatabaseUnavailable, is_unavailable

log = logging.getLogger("oauth2_server.errors")

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
HTML_PATHS = frozenset({"/oauth2/authorize"})
# RFC 6749 has no code for these; the admin API already answers unknown resources so.
HTTP_ERRORS = {404: "not_found", 405: "invalid_request", 413: "invalid_request"}


def error_answer(
    request: Request,
    status: int,
    error: str,
    description: str,
    headers: dict[str, str] | None = None,
) -> Response:
    """`{"error", "error_description"}` JSON (RFC 6749 §5.2 shape) with `status`, or the
    HTML error page on the authorization endpoint."""
    headers = {**NO_STORE, **(headers or {})}
    templates = getattr(request.app.state, "templates", None)
    if request.url.path in HTML_PATHS and templates is not None:
        return templates.TemplateResponse(
            request,
            "error.html",
            {"error": error, "description": description},
            status_code=status,
            headers=headers,
        )
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=headers
    )


def _route(request: Request) -> str:
    """The matched route's template, under its mount (bounded, never the raw path), or
    `unmatched`."""
    route = getattr(request.scope.get("route"), "path", None)
    return request.scope.get("root_path", "") + route if route else "unmatched"


def _request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", "-"))


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own HTTP errors (404, 405 with `Allow`, …) as JSON."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == 404:
        description = "no such endpoint"
    elif status == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        description = f"method {request.method[:16]} is not allowed here; use {allowed}"
    else:
        description = str(exc.detail)[:200]
    error = HTTP_ERRORS.get(status, "invalid_request" if status < 500 else "server_error")
    return error_answer(request, status, error, description, dict(exc.headers or {}))


def unavailable_answer(request: Request) -> Response:
    """503 `temporarily_unavailable` with `Retry-After` (`app.state.retry_after`, seconds)."""
    retry_after = getattr(request.app.state, "retry_after", 5)
    return error_answer(
        request,
        503,
        "temporarily_unavailable",
        "the service cannot reach its database; retry later",
        {"Retry-After": str(retry_after)},
    )


async def database_unavailable(request: Request, exc: Exception) -> Response:
    """DatabaseUnavailable from the storage layer: 503, no log line (Availability logs the
    outage's start and end)."""
    return unavailable_answer(request)


def _log_failure(request: Request, exc: Exception, message: str) -> None:
    """One ERROR line for a failed request (`message` takes the exception's class name,
    the method, the route template and the request id); the traceback only at DEBUG."""
    log.error(
        message, type(exc).__name__, request.method[:16], _route(request), _request_id(request)
    )
    log.debug("traceback of request %s", _request_id(request), exc_info=exc)


async def unhandled(request: Request, exc: Exception) -> Response:
    """The last resort: 500 `server_error`, one log line, the traceback only at DEBUG
    (503 for a raw driver error of an outage that bypassed the storage layer's mapping;
    `DatabaseUnavailable` itself has its own handler)."""
    if is_unavailable(exc) and not isinstance(exc, DatabaseUnavailable):
        availability: Availability | None = getattr(request.app.state, "availability", None)
        if availability is not None:
            availability.note(exc)
        return unavailable_answer(request)
    _log_failure(request, exc, "unhandled %s on %s %s (request %s); answered 500 server_error")
    return error_answer(request, 500, "server_error", "the server failed to handle the request")


class LastResort:
    """Answers any exception no handler took with `handler` (`unhandled`), inside our
    middleware (so the answer carries X-Request-ID and is counted).

    Why not `exception_handlers={Exception: …}`: Starlette gives that handler to its
    outermost ServerErrorMiddleware, which answers outside every middleware and then
    re-raises, so uvicorn logs a traceback per request anyway. Only `Exception` is caught:
    cancellation propagates. If the response had already started (a streamed export),
    nothing more can be sent: one line is logged and the connection ends.
    """

    def __init__(
        self, app: ASGIApp, handler: Callable[[Request, Exception], Awaitable[Response]]
    ) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sender(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sender)
        except Exception as exc:
            request = Request(scope, receive)
            if started:
                _log_failure(request, exc, "%s after the response started on %s %s (request %s)")
                return
            response = await self.handler(request, exc)
            await response(scope, receive, sender)
