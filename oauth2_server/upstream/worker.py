"""The proactive upstream refresh worker (issue #14 item 1; README "Upstream refresh
worker").

Every OAUTH2_UPSTREAM_REFRESH_INTERVAL seconds (±20 %), a cycle claims the grants whose
access token expires within OAUTH2_UPSTREAM_REFRESH_AHEAD seconds (or half its lifetime
when that is shorter: `upstream.freshness.worker_due_at`), that need no consent, whose
backoff is over and that no one else is refreshing, and refreshes them at the provider
before any service asks:

- claims are the grants' refresh-in-progress marks (`storage.upstream_refresh.claim_due`,
  PostgreSQL `FOR UPDATE SKIP LOCKED`), the same mark an exchange's on-demand refresh
  takes: one refresher per grant at a time across processes and instances, and an
  exchange arriving meanwhile waits for that refresh's outcome instead of calling the
  provider again;
- each claim is refreshed by `Refreshing.refresh_claimed`, the on-demand path's own
  provider call and writes (rotated refresh tokens stored, never a null one;
  `invalid_grant` marks the grant needs-consent at once; failures back off);
- at most OAUTH2_UPSTREAM_REFRESH_CONCURRENCY refreshes run at once: a cycle claims that
  many, refreshes them, and claims again until none is due (at most MAX_ROUNDS rounds).

After each cycle the `oauth2_upstream_grants{provider,state}` gauge is set from the
database (`upstream.health.state_counts`); `serve` without the worker runs that part
alone (`run_background`). It runs as `oauth2-server worker` or inside `serve`
(OAUTH2_UPSTREAM_REFRESH_WORKER=true, in every worker process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oauth2_server import metrics
from oauth2_server.config import Settings
from oauth2_server.storage import upstream_refresh as refresh_storage
from oauth2_server.storage import utcnow
from oauth2_server.storage.errors import DatabaseUnavailable
from oauth2_server.upstream.freshness import jittered, refresh_due
from oauth2_server.upstream.health import state_counts
from oauth2_server.upstream.refresh import LEASE_MARGIN, Refreshing

log = logging.getLogger(__name__)

MAX_ROUNDS = 50  # claim-and-refresh rounds per cycle; the rest waits for the next cycle


class RefreshWorker:
    """One process's proactive refresh loop.

    `RefreshWorker(settings, service)`: `service` is the process's `UpstreamService` (its
    sessionmaker, keyring and provider client). `cycle()` runs one cycle and returns the
    outcomes counted ({"ok": n, "needs_consent": n, "failed": n}); `run(stop)` cycles
    until `stop` is set. Safe with any number of workers on one PostgreSQL database; on
    SQLite (one instance) the database's single writer serialises the claims.
    """

    def __init__(self, settings: Settings, service: Refreshing) -> None:
        self.settings = settings
        self.service = service
        self.sessionmaker: async_sessionmaker[AsyncSession] = service.sessionmaker

    async def _claim(self) -> tuple[list[refresh_storage.CredentialRow], datetime]:
        """The grants claimed (as they were before the claim) and the claim's mark time."""
        settings = self.settings
        now = utcnow()
        ahead = settings.upstream_refresh_ahead
        lease = timedelta(seconds=settings.upstream_refresh_cap + LEASE_MARGIN)

        def due(row: refresh_storage.CredentialRow) -> bool:
            return refresh_due(ahead, row.access_expires_at, row.access_issued_at, now)

        async with self.sessionmaker() as session, session.begin():
            claimed = await session.run_sync(
                lambda db: refresh_storage.claim_due(
                    db,
                    now,
                    timedelta(seconds=ahead),
                    now + lease,
                    limit=settings.upstream_refresh_concurrency,
                    due=due,
                )
            )
        return claimed, now

    async def cycle(self) -> Counter[str]:
        """Claim and refresh every due grant (MAX_ROUNDS rounds of at most
        OAUTH2_UPSTREAM_REFRESH_CONCURRENCY at once); the outcomes counted."""
        outcomes: Counter[str] = Counter()
        for _ in range(MAX_ROUNDS):
            claimed, started = await self._claim()
            if not claimed:
                break
            done = await asyncio.gather(
                *(self.service.refresh_claimed(row, started) for row in claimed),
                return_exceptions=True,
            )
            for row, outcome in zip(claimed, done, strict=True):
                if isinstance(outcome, BaseException):
                    # its mark stays until the lease ends; the next cycle takes it over
                    log.error("refreshing upstream grant %s failed: %r", row.id, outcome)
                    outcome = "error"
                outcomes[outcome] += 1
            if len(claimed) < self.settings.upstream_refresh_concurrency:
                break
        if outcomes:
            log.info("upstream refresh worker: %s", dict(outcomes))
        return outcomes

    async def run(self, stop: asyncio.Event) -> None:
        """Cycle until `stop` is set, sleeping OAUTH2_UPSTREAM_REFRESH_INTERVAL ±20 %
        between cycles. A cycle that fails (database unreachable) is logged and the next
        one tries again; a refresh in flight when `stop` is set finishes first."""
        while not stop.is_set():
            try:
                await self.cycle()
                await publish_health(self.sessionmaker)
            except DatabaseUnavailable:
                pass  # logged once by storage.errors.Availability
            except Exception:
                log.exception("upstream refresh worker cycle failed; retrying next cycle")
            await _sleep_until(stop, jittered(self.settings.upstream_refresh_interval))


async def publish_health(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Set `oauth2_upstream_grants{provider,state}` from the database (one grouped read)."""
    async with sessionmaker() as session:
        counts = await session.run_sync(state_counts)
    for (provider, state), n in counts.items():
        metrics.UPSTREAM_GRANTS.labels(provider, state).set(n)


async def _sleep_until(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _health_only(settings: Settings, service: Refreshing, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await publish_health(service.sessionmaker)
        except Exception:  # a gauge is best effort; the database logs its own outage
            log.debug("upstream grant health gauge not updated", exc_info=True)
        await _sleep_until(stop, jittered(settings.upstream_refresh_interval))


def run_background(
    settings: Settings, service: Refreshing
) -> tuple[asyncio.Task[None], asyncio.Event]:
    """`serve`'s background task: the refresh worker when OAUTH2_UPSTREAM_REFRESH_WORKER
    is true, else only the health gauge, every OAUTH2_UPSTREAM_REFRESH_INTERVAL. Returns
    the task and the event that stops it (set it, then await the task)."""
    stop = asyncio.Event()
    if settings.upstream_refresh_worker:
        loop = RefreshWorker(settings, service).run(stop)
    else:
        loop = _health_only(settings, service, stop)
    return asyncio.create_task(loop), stop
