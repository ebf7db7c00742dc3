"""What an upstream refresh (`upstream.refresh`) is about: who asked (`Caller`; the
refresh worker is `WORKER`), what it claimed (`Claim`), and how it can fail (the
`RefreshError`s: what token exchange turns into RFC 8693 §2.2.2 errors, and the refresh
worker into a grant's health)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.exc import DBAPIError

from oauth2_server import metrics
from oauth2_server.audit.log import RequestContext
from oauth2_server.storage import upstream as storage
from oauth2_server.upstream.providers import Provider

LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL: lock_timeout expired


class RefreshError(Exception):
    """A grant could not be made fresh; the message is safe to show the client."""


class NeedsConsent(RefreshError):
    """The provider refused the grant (`invalid_grant`): an admin must reconnect."""


class CredentialGone(RefreshError):
    """The branch was disconnected while the exchange ran."""


class RefreshUnavailable(RefreshError):
    """The provider timed out, failed (5xx) or answered unreadably, or another refresh of
    the grant is still in flight; the stored tokens did not change (a refresh past its
    caller's deadline may still store new ones)."""


class RefreshMisconfigured(RefreshError):
    """This server cannot refresh: provider not configured, client rejected by the
    provider, or stored ciphertext that does not decrypt."""


def observe(provider: str, outcome: str, started: float) -> None:
    """Count one call to `provider`'s token endpoint (`oauth2_upstream_refreshes_total`)
    and its latency since `started` (perf_counter seconds)."""
    metrics.UPSTREAM_REFRESHES.labels(provider, outcome).inc()
    metrics.UPSTREAM_DURATION.labels(provider).observe(time.perf_counter() - started)


@dataclass(frozen=True)
class Caller:
    """Who asked for the refresh (for its audit rows); the refresh worker is no client
    and no branch (its rows say `by: refresh_worker`)."""

    client_id: str | None
    branch_id: str | None
    context: RequestContext


WORKER = Caller(None, None, RequestContext())


@dataclass(frozen=True)
class Claim:
    """A refresh this process claimed: the row as seen, the mark's time, the provider and
    the refresh token in clear, and the interrupted mark it took over (if any)."""

    row: storage.CredentialRow
    started: datetime
    provider: Provider | None  # None: a worker's claim whose grant could not be opened
    refresh_token: str = field(repr=False)
    took_over: datetime | None


def iso(value: datetime | None) -> str:
    """ISO 8601 UTC to the second, or `?`."""
    return value.isoformat(timespec="seconds") if value is not None else "?"


def lock_busy(exc: DBAPIError) -> bool:
    """The statement gave up waiting for a lock (PostgreSQL lock_timeout, SQLite busy)."""
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code == LOCK_NOT_AVAILABLE or "database is locked" in str(exc.orig)
