"""Every Prometheus metric of the server, defined once, and the `/metrics` rendering.

Metrics are `prometheus_client` objects. Under `serve` they run in multiprocess mode:
`cli.cmd_serve` sets `PROMETHEUS_MULTIPROC_DIR` to a fresh private directory before
uvicorn starts its workers (unless the operator set one), every worker writes its values
to memory-mapped files there, and a scrape answered by any worker sums them
(`MultiProcessCollector`), so a 2-worker server reports the deployment's figures, not half.
Without the variable (tests, one process) the in-process registry is rendered.

Names follow the Prometheus conventions: `oauth2_` prefix, `_total` counters, `_seconds`
histograms, base units. Updating a metric is an in-memory (or mmap) write: nothing here
does I/O per request. Gauges that mirror in-memory figures (audit buffer depth, limiter
keys, pool connections in use) are sampled by `Sampler` at most once a second per worker
while it serves, and by the worker that answers a scrape just before it renders.

This module imports nothing of the project, so every layer may count into it.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import Metric
from prometheus_client.process_collector import ProcessCollector

# The classic text format every Prometheus reads (our names need none of 1.0.0's UTF-8).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Metrics register in this registry, not prometheus_client's global one; in multiprocess
# mode a scrape reads the mmap files instead (`render`).
REGISTRY = CollectorRegistry(auto_describe=True)

# Latency buckets (seconds): a token answer takes ~1-20 ms; argon2 and upstream calls more.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "oauth2_http_requests",
    "HTTP requests answered, by method, route template ('unmatched' for no route) and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "oauth2_http_request_duration_seconds",
    "Time from request start to the end of the response body, by method and route template.",
    ["method", "route"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
TOKENS_ISSUED = Counter(
    "oauth2_tokens_issued",
    "Access tokens issued by the token endpoint (RFC 6749 §3.2), by grant type.",
    ["grant_type"],
    registry=REGISTRY,
)
CLIENT_AUTH_FAILURES = Counter(
    "oauth2_client_auth_failures",
    "Client authentications refused with invalid_client (RFC 6749 §5.2).",
    registry=REGISTRY,
)
CLIENT_AUTH_THROTTLED = Counter(
    "oauth2_client_auth_throttled",
    "Requests answered 429 because a failed-authentication limit was reached.",
    registry=REGISTRY,
)
INTROSPECTIONS = Counter(
    "oauth2_introspections",
    "Introspection answers (RFC 7662 §2.2), by the answer's active member.",
    ["active"],
    registry=REGISTRY,
)
REFRESH_REUSE = Counter(
    "oauth2_refresh_reuse",
    "Rotated refresh tokens presented again outside the grace period: family revoked "
    "(RFC 9700 §4.14.2).",
    registry=REGISTRY,
)
REFRESH_GRACE = Counter(
    "oauth2_refresh_grace",
    "Rotated refresh tokens presented again within OAUTH2_REFRESH_REUSE_GRACE and answered.",
    registry=REGISTRY,
)
TOKEN_EXCHANGES = Counter(
    "oauth2_token_exchanges",
    "Token exchanges (RFC 8693) for an upstream provider's token, by provider and outcome.",
    ["provider", "outcome"],
    registry=REGISTRY,
)
UPSTREAM_REFRESHES = Counter(
    "oauth2_upstream_refreshes",
    "Refreshes of an upstream provider's access token, by provider and outcome.",
    ["provider", "outcome"],
    registry=REGISTRY,
)
UPSTREAM_DURATION = Histogram(
    "oauth2_upstream_request_duration_seconds",
    "Time of one call to an upstream provider's token endpoint, by provider.",
    ["provider"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_GRANTS = Gauge(
    "oauth2_upstream_grants",
    "Upstream grants by provider and health state (ok, refresh_failing, needs_consent), as "
    "the database counts them; read every OAUTH2_UPSTREAM_REFRESH_INTERVAL (max over live "
    "workers, which all read the same figure).",
    ["provider", "state"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
WEBHOOK_PENDING = Gauge(
    "oauth2_webhook_events_pending",
    "Webhook events in the outbox not yet delivered, as the database counts them; read by "
    "each delivery loop every cycle (max over live workers, which all read the same figure).",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "oauth2_webhook_deliveries",
    "Webhook delivery attempts by outcome: delivered (2xx), http_error (another status), "
    "timeout (OAUTH2_WEBHOOK_TIMEOUT passed), network_error (no answer).",
    ["outcome"],
    registry=REGISTRY,
)
AUDIT_BUFFER_ROWS = Gauge(
    "oauth2_audit_buffer_rows",
    "Audit rows waiting to be written (sum over live workers).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
AUDIT_ROWS_DROPPED = Counter(
    "oauth2_audit_rows_dropped",
    "Audit rows dropped: buffer full (oldest first) or refused even in minimal form.",
    registry=REGISTRY,
)
AUDIT_ROWS_MALFORMED = Counter(
    "oauth2_audit_rows_malformed",
    "Audit rows the database refused, written in minimal form with flag malformed.",
    registry=REGISTRY,
)
AUDIT_SINK_FAILURES = Counter(
    "oauth2_audit_sink_failures",
    "Signed audit checkpoints or retention records not written to OAUTH2_AUDIT_CHECKPOINT_SINK.",
    registry=REGISTRY,
)
LIMITER_KEYS = Gauge(
    "oauth2_limiter_keys",
    "Failure-limiter keys held in memory (sum over live workers).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
LIMITER_REFUSAL_WINDOWS = Gauge(
    "oauth2_limiter_refusal_windows",
    "Refusal summaries open (sum over live workers).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
ARGON2_RUNS = Counter(
    "oauth2_argon2_verifications",
    "argon2 verifications of legacy client secret hashes started.",
    registry=REGISTRY,
)
ARGON2_BUSY = Counter(
    "oauth2_argon2_busy",
    "Requests answered 503 because the argon2 queue was full.",
    registry=REGISTRY,
)
DB_POOL_IN_USE = Gauge(
    "oauth2_db_pool_connections_in_use",
    "Database connections checked out, by pool (sqlalchemy, asyncpg); sum over live workers.",
    ["pool"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
DB_POOL_IDLE = Gauge(
    "oauth2_db_pool_connections_idle",
    "Database connections open and idle, by pool; sum over live workers.",
    ["pool"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
DB_POOL_WAITING = Gauge(
    "oauth2_db_pool_waiting",
    "Callers waiting for a pooled connection, by pool; sum over live workers.",
    ["pool"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)


# Tail instruments (issue #13; `monitor`, `storage.coalesce`). Fixed buckets, fixed labels.
# Fine buckets around 1-50 ms, where a 10 ms p99 target is won or lost.
_TAIL_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
EVENT_LOOP_LAG = Histogram(
    "oauth2_event_loop_lag_seconds",
    "How late a worker's 1 ms ticker woke: time its event loop was busy elsewhere.",
    buckets=_TAIL_BUCKETS,
    registry=REGISTRY,
)
GC_PAUSE = Histogram(
    "oauth2_gc_pause_seconds",
    "Garbage-collection pauses (gc.callbacks start to stop), by generation (0, 1, 2).",
    ["generation"],
    buckets=_TAIL_BUCKETS,
    registry=REGISTRY,
)
DB_POOL_WAIT = Histogram(
    "oauth2_db_pool_wait_seconds",
    "Time from asking the pool for a connection to holding one (or giving up), by pool.",
    ["pool"],
    buckets=_TAIL_BUCKETS,
    registry=REGISTRY,
)
DB_BATCH_SIZE = Histogram(
    "oauth2_db_batch_size",
    "Requests carried by one coalesced hot-path statement (storage.coalesce), by statement.",
    ["statement"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
    registry=REGISTRY,
)
DB_STATEMENT = Histogram(
    "oauth2_db_statement_seconds",
    "Time of one coalesced hot-path statement, pool wait included, by statement (for "
    "'write', the access-token and audit rows' commit).",
    ["statement"],
    buckets=_TAIL_BUCKETS,
    registry=REGISTRY,
)


class CountWaiting:
    """Wraps a pool's `acquire()` context (asyncpg's `PoolAcquireContext`): the caller
    counts in `oauth2_db_pool_waiting{pool=…}` from the call until it holds a connection
    (or gave up), and that time is observed in `oauth2_db_pool_wait_seconds{pool=…}`.
    In-memory (mmap) updates only."""

    def __init__(self, acquire: Any, pool: str) -> None:
        self._acquire = acquire
        self._gauge = DB_POOL_WAITING.labels(pool)
        self._wait = DB_POOL_WAIT.labels(pool)

    async def __aenter__(self) -> Any:
        self._gauge.inc()
        started = time.perf_counter()
        try:
            return await self._acquire.__aenter__()
        finally:
            self._wait.observe(time.perf_counter() - started)
            self._gauge.dec()

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._acquire.__aexit__(*exc)


def multiprocess_mode() -> bool:
    """True when this process's metrics are written to `PROMETHEUS_MULTIPROC_DIR` (the
    variable was set before prometheus_client was imported, as `serve` arranges)."""
    return values.ValueClass is not values.MutexValue and bool(
        os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    )


class _PidProcessCollector:
    """`process_*` figures (CPU seconds, memory, open files, start time) of the worker that
    answers the scrape, labelled with its `pid`: the multiprocess files hold none, and a
    sum of two workers' start times would mean nothing."""

    def __init__(self) -> None:
        self._inner = ProcessCollector(registry=None)

    def collect(self) -> Iterable[Metric]:
        pid = str(os.getpid())
        for family in self._inner.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                out.add_sample(
                    sample.name,
                    {**sample.labels, "pid": pid},
                    sample.value,
                    sample.timestamp,
                    sample.exemplar,
                )
            yield out


def render() -> bytes:
    """The Prometheus text exposition (format 0.0.4, `CONTENT_TYPE`): every worker's
    metrics summed in multiprocess mode, else this process's; plus this worker's process
    metrics with a `pid` label."""
    registry = CollectorRegistry()
    if multiprocess_mode():
        directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        _forget_dead_workers(directory)
        multiprocess.MultiProcessCollector(registry, directory)
    else:
        registry.register(_Forward(REGISTRY))
    registry.register(_PidProcessCollector())
    return generate_latest(registry)


class _Forward:
    """Collects another registry (the in-process one) into a scrape registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return self._source.collect()


def _forget_dead_workers(directory: str) -> None:
    """Drop the live gauges (`livesum`) of workers that are gone (uvicorn replaced a
    crashed one), so their last values stop counting."""
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        try:
            pid = int(os.path.basename(path).rsplit("_", 1)[1].removesuffix(".db"))
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, directory)
        except PermissionError:
            continue  # alive, owned by someone else


class Sampler:
    """Copies in-memory figures into gauges, at most once per `interval` seconds.

    `sources` are callables returning {gauge: value} or {(gauge, labels): value}; `due()`
    is a monotonic-clock comparison, cheap enough for every response.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._next = 0.0
        self.sources: list[Callable[[], dict[Any, float]]] = []

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.interval
        return True

    def sample(self) -> None:
        """Read every source now; a source that fails (shutting down) is skipped."""
        for source in self.sources:
            try:
                figures = source()
            except Exception:  # noqa: S112 (a figure is best effort, never a failed request)
                continue
            for key, value in figures.items():
                gauge, labels = key if isinstance(key, tuple) else (key, None)
                (gauge.labels(*labels) if labels else gauge).set(value)
