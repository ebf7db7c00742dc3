"""Liveness, readiness (database reachable) and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from oauth2_server import metrics as metrics_module
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


async def metrics(request: Request) -> Response:
    """GET /metrics: Prometheus text exposition (format 0.0.4) of every worker's metrics
    summed (`oauth2_server.metrics`), this worker's figures sampled first."""
    sampler = metrics_module.Sampler()
    sampler.sources = [lambda: sampled_figures(request.app.state)]
    sampler.sample()
    return Response(metrics_module.render(), media_type=metrics_module.CONTENT_TYPE)


def sampled_figures(state: Any) -> dict[Any, float]:
    """This worker's in-memory figures for the gauges of `oauth2_server.metrics`: audit
    buffer depth, failure-limiter keys and open refusal windows, and connections in use
    and idle in the SQLAlchemy pool and the FastStore asyncpg pool. Empty before the
    lifespan has built them."""
    figures: dict[Any, float] = {}
    oauth = getattr(state, "oauth", None)
    if oauth is not None:
        figures[metrics_module.AUDIT_BUFFER_ROWS] = oauth.audit_buffer.depth
        figures[metrics_module.LIMITER_KEYS] = oauth.limiter.held_keys()
        figures[metrics_module.LIMITER_REFUSAL_WINDOWS] = len(oauth.refusals)
        pool = oauth.bridge.fast.pool  # asyncpg's on PostgreSQL, else None
        if pool is not None:
            idle = pool.get_idle_size()
            figures[(metrics_module.DB_POOL_IN_USE, ("asyncpg",))] = pool.get_size() - idle
            figures[(metrics_module.DB_POOL_IDLE, ("asyncpg",))] = idle
    engine = getattr(state, "engine", None)
    if engine is not None:
        pool = engine.sync_engine.pool
        if hasattr(pool, "checkedout"):
            figures[(metrics_module.DB_POOL_IN_USE, ("sqlalchemy",))] = pool.checkedout()
            figures[(metrics_module.DB_POOL_IDLE, ("sqlalchemy",))] = pool.checkedin()
    return figures
