"""Liveness, readiness (database reachable) and Prometheus metrics."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse

from oauth2_server.storage.errors import is_unavailable


async def healthz(request: Request) -> JSONResponse:
    """GET /healthz: the process answers."""
    return JSONResponse({"status": "ok"})


def _audit_figures(request: Request) -> dict[str, int]:
    """This worker's audit buffer figures (`AuditBuffer.figures`), empty before start-up."""
    oauth = getattr(request.app.state, "oauth", None)
    buffer = getattr(oauth, "audit_buffer", None)
    return buffer.figures() if buffer is not None else {}


async def readyz(request: Request) -> JSONResponse:
    """GET /readyz: 200 when the database answers, else 503 with `Retry-After` (within
    `OAUTH2_DB_TIMEOUT`; an outage it sees is logged once, like any other, by
    `storage.errors.Availability`). `audit` carries this worker's audit buffer figures:
    `buffered_rows`, `dropped_rows`, `malformed_rows`."""
    audit = _audit_figures(request)
    availability = request.app.state.availability
    try:
        async with request.app.state.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means not ready
        if is_unavailable(exc):
            availability.note(exc)
        return JSONResponse(
            {"status": "unavailable", "database": type(exc).__name__, "audit": audit},
            503,
            headers={"Retry-After": str(request.app.state.retry_after)},
        )
    availability.available()
    return JSONResponse({"status": "ok", "database": "ok", "audit": audit})


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
        request.app.state.request_counter.render()
        + _render_audit(_audit_figures(request))
        + _render_limiter(request),
        media_type="text/plain; version=0.0.4",
    )


# (figure, metric name, type, help) of the audit buffer's lines in /metrics.
_AUDIT_METRICS = (
    ("buffered_rows", "oauth2_audit_buffer_rows", "gauge", "Audit rows waiting to be written."),
    (
        "dropped_rows",
        "oauth2_audit_rows_dropped_total",
        "counter",
        "Audit rows dropped: buffer full (oldest first) or refused even in minimal form.",
    ),
    (
        "malformed_rows",
        "oauth2_audit_rows_malformed_total",
        "counter",
        "Audit rows the database refused, written in minimal form with flag malformed.",
    ),
)


def _render_audit(figures: dict[str, int]) -> str:
    lines: list[str] = []
    for key, name, kind, help_text in _AUDIT_METRICS:
        if key in figures:
            lines += [
                f"# HELP {name} {help_text} (this worker)",
                f"# TYPE {name} {kind}",
                f"{name} {figures[key]}",
            ]
    return "\n".join(lines) + "\n" if lines else ""


def _render_limiter(request: Request) -> str:
    """This worker's failure-limiter and argon2 figures (oauth.throttling, oauth.clients)."""
    oauth = getattr(request.app.state, "oauth", None)
    if oauth is None:
        return ""
    figures = (
        ("oauth2_limiter_keys", "gauge", "Failure-limiter keys held in memory",
         oauth.limiter.held_keys()),
        ("oauth2_limiter_refusal_windows", "gauge", "Refusal summaries open",
         len(oauth.refusals)),
        ("oauth2_argon2_verifications_total", "counter", "argon2 verifications started",
         oauth.argon2.runs),
        ("oauth2_argon2_busy_total", "counter", "Requests refused: argon2 queue full",
         oauth.argon2.refused),
    )  # fmt: skip
    lines: list[str] = []
    for name, kind, help_text, value in figures:
        lines += [f"# HELP {name} {help_text} (this worker).", f"# TYPE {name} {kind}"]
        lines.append(f"{name} {value}")
    return "\n".join(lines) + "\n"
