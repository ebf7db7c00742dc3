"""The webhook delivery loop: the outbox's events to `OAUTH2_WEBHOOK_URL`, at least once,
in order per subject (issue #14 item 3; README "Webhooks").

Each cycle (`WebhookDelivery.run_once`):

1. claims up to BATCH due events, at most one per subject, leased for
   `OAUTH2_WEBHOOK_TIMEOUT` + LEASE_MARGIN seconds (`storage.outbox.claim_due`: PostgreSQL
   `FOR UPDATE SKIP LOCKED`, so loops in several workers and instances never send one
   event at the same time), in a short transaction;
2. POSTs them at once, each signed per Standard Webhooks (`notify.signing`) with a fresh
   `webhook-timestamp`, within one overall deadline of `OAUTH2_WEBHOOK_TIMEOUT` seconds
   (connect, send, status line; the answer's body is never read), no redirects followed;
3. records each outcome with its `webhook_delivery` audit row in one transaction:
   delivered only after a 2xx status was read (`mark_delivered`), otherwise retried after
   a backoff doubling from BASE_BACKOFF seconds up to `OAUTH2_WEBHOOK_BACKOFF_MAX`, ±20 %
   jitter (`mark_failed`). An earlier undelivered event blocks its subject's later ones.

A loop stopped between claim and record hands its unrecorded events back
(`outbox.release`); a sender that dies there leaves a lease that runs out. The event is
then sent again (receivers deduplicate by `webhook-id`). The loop runs beside
the request path in `serve` and in `oauth2-server worker` (`run_delivery`); requests only
insert outbox rows, so a receiver that hangs or fails never slows them. Failures are
logged once when they start and once when deliveries succeed again, naming the
receiver's host, never the secret, a signature or a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from oauth2_server import metrics
from oauth2_server.audit.log import AuditEvent, record
from oauth2_server.config import Settings
from oauth2_server.notify.signing import Signer
from oauth2_server.storage import outbox, utcnow
from oauth2_server.storage.outbox import ClaimedEvent

log = logging.getLogger("oauth2_server.webhooks")

BATCH = 20  # events claimed (and sent concurrently) per cycle
LEASE_MARGIN = 30.0  # seconds a lease outlives the delivery deadline
BASE_BACKOFF = 5.0  # seconds before the first retry
PURGE_SECONDS = 3600.0  # how often delivered events past retention are deleted
PURGE_BATCH = 1000  # events deleted per purge transaction
AUDIT_ACTION = "webhook_delivery"


@dataclass(frozen=True)
class Attempt:
    """The outcome of one POST: `outcome` is `delivered` (2xx), `http_error` (another
    status), `timeout` or `network_error`; `status` the HTTP status when one was read;
    `error` the error class (`http_<status>`, `timeout` or an httpx exception name)."""

    outcome: str
    status: int | None = None
    error: str | None = None


def backoff(failures: int, maximum: float) -> float:
    """Seconds before retrying after the `failures`-th failed attempt (1, 2, …) of one
    event: BASE_BACKOFF doubling per failure, at most `maximum`, ±20 % jitter."""
    exponent = min(max(failures - 1, 0), 32)
    return min(maximum, BASE_BACKOFF * 2.0**exponent) * random.uniform(0.8, 1.2)


def encode_body(event: ClaimedEvent) -> bytes:
    """The JSON body of `event`, compact, exactly the bytes that are signed and sent."""
    return json.dumps(event.payload, separators=(",", ":"), ensure_ascii=False).encode()


class WebhookDelivery:
    """Delivers the outbox to `settings.webhook_url` (see the module docstring).

    `sessions` opens sessions on the server's database. `transport` (tests) replaces
    httpx's network transport. `start()`/`stop()` run `run()` as a task.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = settings.webhook_url
        self.host = urlsplit(self.url).hostname or "?"
        self.timeout = settings.webhook_timeout
        self.interval = settings.webhook_poll_interval
        self.backoff_max = settings.webhook_backoff_max
        self.retention = timedelta(days=settings.webhook_retention_days)
        self._signer = Signer(settings.webhook_secret)
        self._sessions = sessions
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
            transport=transport,
            headers={"user-agent": "oauth2-server-webhooks"},
        )
        self._task: asyncio.Task[None] | None = None
        self._failing = False  # the receiver's last attempt failed (log once per streak)
        self._db_failing = False
        self._last_purge = 0.0

    async def post(self, event: ClaimedEvent) -> Attempt:
        """Send `event` once, signed with the current time; never raises for the
        receiver's faults. Only the status line is awaited, within `timeout` seconds."""
        body = encode_body(event)
        headers = self._signer.headers(event.event_id, int(time.time()), body)
        try:
            async with asyncio.timeout(self.timeout):
                request = self._http.build_request("POST", self.url, content=body, headers=headers)
                response = await self._http.send(request, stream=True)
                await response.aclose()  # the body is not read: no receiver can hold us
        except (TimeoutError, httpx.TimeoutException):
            return Attempt("timeout", error="timeout")
        except httpx.HTTPError as exc:
            return Attempt("network_error", error=type(exc).__name__)
        if 200 <= response.status_code < 300:
            return Attempt("delivered", status=response.status_code)
        return Attempt(
            "http_error", status=response.status_code, error=f"http_{response.status_code}"
        )

    async def record(self, event: ClaimedEvent, attempt: Attempt) -> None:
        """Store `attempt`'s outcome on the event and its `webhook_delivery` audit row
        (event id, type, subject, attempt number, outcome, status or error class) in
        one transaction."""
        number = event.attempts + 1
        details = {
            "event_id": event.event_id,
            "event_type": event.event_type,
            "event_subject": event.subject,
            "attempt": number,
            "outcome": attempt.outcome,
            **({"status": attempt.status} if attempt.status is not None else {}),
            **({"error": attempt.error} if attempt.error else {}),
        }
        audit = AuditEvent(AUDIT_ACTION, details=details)
        async with self._sessions() as session, session.begin():
            if attempt.outcome == "delivered":
                await session.run_sync(outbox.mark_delivered, event.seq)
            else:
                retry_in = backoff(number, self.backoff_max)
                await session.run_sync(outbox.mark_failed, event.seq, attempt.error or "", retry_in)
            await session.run_sync(record, audit)
        metrics.WEBHOOK_DELIVERIES.labels(attempt.outcome).inc()

    def _note(self, attempts: list[Attempt]) -> None:
        """Log the start and the end of a run of failed deliveries, once each."""
        failed = [a for a in attempts if a.outcome != "delivered"]
        if failed and not self._failing:
            log.warning(
                "webhook deliveries to %s failing (%s); retrying with backoff",
                self.host,
                failed[0].error,
            )
        elif not failed and attempts and self._failing:
            log.info("webhook deliveries to %s succeed again", self.host)
        if attempts:
            self._failing = bool(failed)

    async def run_once(self) -> int:
        """One cycle: claim, send, record (module docstring); how many events were tried."""
        async with self._sessions() as session, session.begin():
            events = await session.run_sync(outbox.claim_due, BATCH, self.timeout + LEASE_MARGIN)
        recorded: set[int] = set()
        try:
            attempts = await asyncio.gather(*(self.post(event) for event in events))
            for event, attempt in zip(events, attempts, strict=True):
                await self.record(event, attempt)
                recorded.add(event.seq)
        except asyncio.CancelledError:  # stopping: hand back what has no outcome yet
            await asyncio.shield(self._release([e.seq for e in events if e.seq not in recorded]))
            raise
        self._note(list(attempts))
        return len(events)

    async def _release(self, seqs: list[int]) -> None:
        """End the leases of `seqs` (`outbox.release`); a database error leaves them to
        run out, as for a sender that died."""
        with contextlib.suppress(Exception):
            async with self._sessions() as session, session.begin():
                await session.run_sync(outbox.release, seqs)

    async def housekeeping(self) -> None:
        """Update the pending-events gauge; hourly, delete delivered events past retention."""
        async with self._sessions() as session, session.begin():
            metrics.WEBHOOK_PENDING.set(await session.run_sync(outbox.pending_count))
            if time.monotonic() - self._last_purge >= PURGE_SECONDS:
                self._last_purge = time.monotonic()
                before = utcnow() - self.retention
                await session.run_sync(outbox.purge_delivered, before, PURGE_BATCH)

    async def run(self) -> None:
        """Cycle until cancelled: at once while events were due, else every `interval`
        seconds. A database error is logged (once per outage) and retried next cycle."""
        while True:
            tried = 0
            try:
                tried = await self.run_once()
                await self.housekeeping()
                if self._db_failing:
                    log.info("webhook delivery loop reaches the database again")
                self._db_failing = False
            except Exception as exc:  # the loop outlives any one cycle's failure
                if not self._db_failing:
                    log.warning("webhook delivery cycle failed (%s); retrying", type(exc).__name__)
                self._db_failing = True
            if tried < BATCH:
                await asyncio.sleep(self.interval * random.uniform(0.8, 1.2))

    def start(self) -> None:
        """Run `run()` as a background task."""
        self._task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        """Cancel the loop (events claimed but without an outcome are handed back, so
        another loop retries them at once) and close the HTTP client."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._http.aclose()


def start_delivery(settings: Settings, engine: AsyncEngine) -> WebhookDelivery | None:
    """Start the delivery loop on `engine` when OAUTH2_WEBHOOK_URL is set (None when it is
    not: events wait in the outbox). For `serve`'s lifespan; stop it with `stop()`."""
    if not settings.webhook_url:
        return None
    delivery = WebhookDelivery(settings, async_sessionmaker(engine, expire_on_commit=False))
    delivery.start()
    log.info("webhook deliveries to %s started", delivery.host)
    return delivery


async def run_delivery(settings: Settings, engine: AsyncEngine, stop: asyncio.Event) -> None:
    """Run the delivery loop on `engine` until `stop` is set (`oauth2-server worker`,
    beside the refresh worker); returns at once when OAUTH2_WEBHOOK_URL is empty."""
    delivery = start_delivery(settings, engine)
    if delivery is None:
        return
    try:
        await stop.wait()
    finally:
        await delivery.stop()


async def stop_delivery(delivery: WebhookDelivery | None) -> None:
    """Stop a loop `start_delivery` started (nothing for None)."""
    if delivery is not None:
        await delivery.stop()
