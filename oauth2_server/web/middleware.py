"""Request ids, security headers and request counting, as pure ASGI middleware."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oauth2_server.web.forms import new_request_id

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
# HTML pages must not be framed (clickjacking, RFC 9700 §4.16) nor cached.
HTML_HEADERS = {
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "cache-control": "no-store",
}


class HttpMiddleware:
    """Adds X-Request-ID, security headers (framing forbidden on HTML), counts responses."""

    def __init__(self, app: ASGIApp, counter: Any) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        presented = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                presented = value.decode("latin-1")
        request_id = new_request_id(presented)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if headers.get("content-type", "").startswith("text/html"):
                    for name, value in HTML_HEADERS.items():
                        headers[name] = value
                route = scope.get("route")
                path = getattr(route, "path", "unmatched")
                self.counter.add(scope["method"], path, message["status"])
            await send(message)

        await self.app(scope, receive, send_wrapper)
