"""Liveness, readiness (database reachable) and Prometheus metrics."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse


async def healthz(request: Request) -> JSONResponse:
    """GET /healthz: the process answers."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """GET /readyz: 200 when the database answers, else 503."""
    try:
        async with request.app.state.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means not ready
        return JSONResponse({"status": "unavailable", "database": type(exc).__name__}, 503)
    return JSONResponse({"status": "ok", "database": "ok"})


class RequestCounter:
    """Per-process request counts by route and status, in Prometheus text format."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, int]] = Counter()

    def add(self, method: str, route: str, status: int) -> None:
        self.counts[(method, route, status)] += 1

    def render(self) -> str:
        lines = [
            "# HELP oauth2_http_requests_total HTTP requests answered by this worker.",
            "# TYPE oauth2_http_requests_total counter",
        ]
        for (method, route, status), count in sorted(self.counts.items()):
            lines.append(
                f'oauth2_http_requests_total{{method="{method}",route="{route}",'
                f'status="{status}"}} {count}'
            )
        return "\n".join(lines) + "\n"


async def metrics(request: Request) -> PlainTextResponse:
    """GET /metrics: Prometheus text exposition (this worker's counters)."""
    return PlainTextResponse(
        request.app.state.request_counter.render(),
        media_type="text/plain; version=0.0.4",
    )
