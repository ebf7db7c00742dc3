"""Request ids, security headers, the access line and request metrics, as pure ASGI
middleware."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oauth2_server import metrics
from oauth2_server.logs import ACCESS_LOGGER, AccessFacts
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
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MAX_LABEL_CHILDREN = 2048  # cached (method, route, status) metric children per worker

access_log = logging.getLogger(ACCESS_LOGGER)


def route_templates(routes: list[BaseRoute], prefix: str = "") -> dict[int, str]:
    """{id(route): full path template} for every route, mounts included
    (`/admin` + `/clients/{client_id}`), so a label never carries a raw path with ids."""
    templates: dict[int, str] = {}
    for route in routes:
        path = prefix + getattr(route, "path", "")
        if isinstance(route, Mount):
            templates.update(route_templates(route.routes, path))
        templates[id(route)] = path
    return templates


class HttpMiddleware:
    """Adds X-Request-ID and security headers (framing forbidden on HTML); counts every
    response in `oauth2_http_requests_total` and `oauth2_http_request_duration_seconds`
    by route template; writes ONE access line per request on the `oauth2_server.access`
    logger when `access_log` is on (OAUTH2_ACCESS_LOG).

    The access line carries request id, method, route template, status, latency (ms),
    client_id when the OAuth or admin layer authenticated one (`AccessFacts`), and the
    client IP as uvicorn's trusted-proxy handling left it; never the raw path or the
    query string, so never a parameter's value.
    """

    def __init__(self, app: ASGIApp, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log
        self.templates: dict[int, str] | None = None
        self.sampler = metrics.Sampler()
        # (method, route, status) -> its two labelled metric children: `labels()` costs
        # a tuple build, a lock and a dict lookup per call (~3 % of a token request)
        self.children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _template(self, app: Any, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            return UNMATCHED
        if self.templates is None:
            self.templates = route_templates(app.routes)
        return self.templates.get(id(route), UNMATCHED)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        app = scope["app"]  # the Starlette app (a Mount may replace the scope's entry)
        presented = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                presented = value.decode("latin-1")
        request_id = new_request_id(presented)
        facts = AccessFacts(request_id)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["access"] = facts
        status = 500  # unless a response starts: an exception escaped every handler
        done = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, done
            if message["type"] == "http.response.body" and not message.get("more_body"):
                # counted and logged before the last byte leaves: a client that reads its
                # answer and then scrapes /metrics finds it counted
                done = True
                self._done(app, scope, facts, status, time.perf_counter() - started)
            elif message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if headers.get("content-type", "").startswith("text/html"):
                    # A page may set its own CSP (admin/docs.py: scripts from 'self');
                    # it must keep frame-ancestors 'none' itself.
                    own_csp = headers.get("content-security-policy")
                    for name, value in HTML_HEADERS.items():
                        headers[name] = value
                    if own_csp:
                        headers["content-security-policy"] = own_csp
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if not done:  # no complete answer (the client left, or nothing was sent)
                self._done(app, scope, facts, status, time.perf_counter() - started)

    def _done(
        self, app: Any, scope: Scope, facts: AccessFacts, status: int, seconds: float
    ) -> None:
        method = scope["method"] if scope["method"] in _METHODS else "other"
        route = self._template(app, scope)
        key = (method, route, status)
        children = self.children.get(key)
        if children is None:
            children = (
                metrics.HTTP_REQUESTS.labels(method, route, str(status)),
                metrics.HTTP_DURATION.labels(method, route),
            )
            if len(self.children) < MAX_LABEL_CHILDREN:  # statuses are the app's own
                self.children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if self.sampler.due():
            self.sampler.sources = self.sampler.sources or _figure_sources(app)
            self.sampler.sample()
        if self.access_log and access_log.isEnabledFor(logging.INFO):
            client = scope.get("client")
            fields = {
                "request_id": facts.request_id,
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
                "client_id": facts.client_id,
                "client_ip": client[0] if client else None,
            }
            access_log.info(
                "%s %s %s %.2fms request_id=%s client_id=%s client_ip=%s",
                method,
                route,
                status,
                fields["duration_ms"],
                facts.request_id,
                facts.client_id or "-",
                fields["client_ip"] or "-",
                extra=fields,
            )


def _figure_sources(app: Any) -> list[Any]:
    from oauth2_server.web.health import sampled_figures

    return [lambda: sampled_figures(app.state)]
