"""Keeping an upstream grant's access token fresh for token exchange (DESIGN.md
"Upstream brokering" 3): refresh at the provider under the grant's refresh mark, so that
concurrent exchanges cause one upstream refresh; `invalid_grant` marks the grant as
needing consent.

The proactive refresh worker (`upstream.worker`, issue #14 item 1) claims due grants
itself (`storage.upstream_refresh.claim_due`) and hands each claim to `refresh_claimed`:
the provider call and every outcome's write are this module's, for both paths. Health
transitions (issue #14 items 2-3) are written in the outcome's transaction, with their
webhook event (`storage.outbox`): `branch.needs_consent` per linked branch,
`upstream.refresh_failing` when OAUTH2_UPSTREAM_FAILING_THRESHOLD failures are reached,
`upstream.recovered` on the success after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from oauth2_server import metrics
from oauth2_server.audit.log import AuditEvent, RequestContext, record
from oauth2_server.crypto.keyring import DecryptionError
from oauth2_server.storage import upstream as storage
from oauth2_server.storage import upstream_refresh as refresh_storage
from oauth2_server.storage import utcnow
from oauth2_server.upstream.base import UpstreamBase, printable
from oauth2_server.upstream.claims import (
    WORKER,
    Caller,
    Claim,
    CredentialGone,
    NeedsConsent,
    RefreshError,
    RefreshMisconfigured,
    RefreshUnavailable,
    iso,
    lock_busy,
    observe,
)
from oauth2_server.upstream.client import TokenResponse, UpstreamRejected, UpstreamUnavailable
from oauth2_server.upstream.events import notify, notify_needs_consent
from oauth2_server.upstream.freshness import refresh_due, retry_delay
from oauth2_server.upstream.providers import Provider, ProviderNotConfigured, UnknownProvider
from oauth2_server.upstream.sealing import REFRESH, seal_tokens

__all__ = [
    "CredentialGone",
    "NeedsConsent",
    "RefreshError",
    "RefreshMisconfigured",
    "RefreshUnavailable",
    "Refreshing",
]

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # how often a waiter looks at another process's refresh mark
LEASE_MARGIN = 5.0  # seconds a mark outlives the refresh cap before it may be taken over


class Refreshing(UpstreamBase):
    """Refresh-if-due with a committed refresh mark and an in-process single flight."""

    # -- freshness (DESIGN.md "Upstream brokering" 3) --------------------------------------

    async def ensure_fresh(
        self, credential_id: str, *, client_id: str, branch_id: str, context: RequestContext
    ) -> None:
        """Make grant `credential_id` hold an access token that is not due for a refresh
        (`upstream.freshness`), refreshing it at the provider if needed.

        Waits OAUTH2_UPSTREAM_TIMEOUT at most; past it raises RefreshUnavailable while the
        refresh goes on in the background (to OAUTH2_UPSTREAM_REFRESH_CAP) and stores what
        it gets. Raises NeedsConsent (provider said `invalid_grant`, or narrowed the scope;
        the grant is now marked, and that mark is committed), CredentialGone,
        RefreshUnavailable or RefreshMisconfigured. Concurrent callers in this process
        share one attempt; callers in other processes share its outcome through the mark.
        """
        task = self._inflight.get(credential_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._refresh(credential_id, Caller(client_id, branch_id, context))
            )
            self._inflight[credential_id] = task
            task.add_done_callback(lambda done: self._settled(credential_id, done))
        deadline = self.settings.upstream_timeout
        waiting = asyncio.timeout(deadline)
        try:
            async with waiting:
                await asyncio.shield(task)
        except TimeoutError:
            if not waiting.expired():
                raise
            raise RefreshUnavailable(
                f"the refresh did not finish within {deadline:g} s; it goes on and its "
                "answer will be stored"
            ) from None

    def _settled(self, credential_id: str, task: asyncio.Task[None]) -> None:
        if self._inflight.get(credential_id) is task:
            del self._inflight[credential_id]
        if not task.cancelled():
            task.exception()  # retrieved here, so a caller that went away leaves no warning

    def _due(self, row: storage.CredentialRow, now: datetime) -> bool:
        return refresh_due(
            self.settings.upstream_min_ttl, row.access_expires_at, row.access_issued_at, now
        )

    async def _read(self, credential_id: str) -> storage.CredentialRow | None:
        async with self.sessionmaker() as session:
            return await session.run_sync(
                lambda db: refresh_storage.read_credential(db, credential_id)
            )

    async def _refresh(self, credential_id: str, caller: Caller) -> None:
        """The shielded task: claim the refresh (or share another's outcome), call the
        provider within OAUTH2_UPSTREAM_REFRESH_CAP, store the outcome."""
        claim = await self._claim(credential_id, caller)
        if claim is None:
            return  # fresh: refreshed by another refresher while this one looked
        await self._call_and_store(claim, caller)

    async def refresh_claimed(self, row: storage.CredentialRow, started: datetime) -> str:
        """Refresh grant `row`, which the refresh worker claimed at `started` (its mark,
        `storage.upstream_refresh.claim_due`), exactly as an exchange's refresh would.
        Returns the outcome: `ok`, `needs_consent` or `failed` (recorded on the grant,
        with its backoff; never raised)."""
        event = self._event("upstream_refresh_failed", row, WORKER)
        opened = self._provider_and_token(row, f"grant {row.id}", event)
        if isinstance(opened, RefreshError):
            await self._failed(
                Claim(row, started, None, "", None), WORKER, str(opened), [], "misconfigured"
            )
            return "failed"
        took_over = row.refresh_started_at if row.interrupted(started) else None
        try:
            await self._call_and_store(Claim(row, started, *opened, took_over), WORKER)
        except NeedsConsent:
            return "needs_consent"
        except RefreshError:
            return "failed"
        return "ok"

    async def _call_and_store(self, claim: Claim, caller: Caller) -> None:
        """Call the provider for a claimed refresh (within OAUTH2_UPSTREAM_REFRESH_CAP) and
        store the outcome. Raises NeedsConsent, RefreshUnavailable or
        RefreshMisconfigured when there are no new tokens."""
        if claim.provider is None:
            raise RefreshMisconfigured(f"{claim.row.provider} is not configured")
        started = time.perf_counter()
        try:
            tokens = await self.client.refresh(claim.provider, claim.refresh_token)
        except UpstreamUnavailable as exc:
            observe(claim.row.provider, "unavailable", started)
            await self._failed(
                claim, caller, printable(exc), ["upstream_unavailable"], "upstream_unavailable"
            )
            raise RefreshUnavailable(printable(exc)) from None
        except UpstreamRejected as exc:
            invalid_grant = exc.error == "invalid_grant"
            observe(claim.row.provider, "needs_consent" if invalid_grant else "refused", started)
            if invalid_grant:
                raise await self._refused(claim, caller, exc) from None
            await self._failed(claim, caller, printable(exc), [], "provider_refused")
            raise RefreshMisconfigured(
                f"{claim.row.provider} refused this server's refresh request ({printable(exc)})"
            ) from None
        observe(claim.row.provider, "ok", started)
        late = time.perf_counter() - started > self.settings.upstream_timeout
        narrowed = await self._write(
            lambda db: self._store_refresh(db, claim, tokens, caller, late)
        )
        if narrowed is not None:
            raise NeedsConsent(narrowed)

    async def _claim(self, credential_id: str, caller: Caller) -> Claim | None:
        """Claim the grant's refresh: None when it is fresh (nothing to do). While another
        refresher's mark is live, wait for its outcome (at most OAUTH2_UPSTREAM_TIMEOUT) and
        share it: its failure is raised here, without calling the provider again."""
        # a little before the caller's own deadline, so the caller hears why
        give_up = time.monotonic() + max(0.0, self.settings.upstream_timeout - 2 * POLL_SECONDS)
        waited_for: datetime | None = None
        while True:
            row = await self._read(credential_id)
            now = utcnow()
            if row is None:
                raise CredentialGone(f"branch {caller.branch_id} is no longer connected")
            if row.needs_consent:
                raise NeedsConsent(row.consent_error or "the provider refused the grant")
            if not self._due(row, now):
                return None
            if waited_for is not None and row.refresh_started_at != waited_for:
                failed_at = row.last_refresh_error_at
                if failed_at is not None and failed_at >= waited_for:
                    raise RefreshUnavailable(row.last_refresh_error or "the refresh failed")
            if row.refreshing(now):
                waited_for = row.refresh_started_at
                if time.monotonic() >= give_up:
                    raise RefreshUnavailable(
                        f"a refresh of this grant is in progress since {iso(waited_for)}"
                    )
                await asyncio.sleep(POLL_SECONDS)
                continue
            opened = await self._openable(row, caller)
            if await self._try_claim(row, now):
                provider, refresh_token = opened
                took_over = row.refresh_started_at  # set: that refresh never finished
                if took_over is not None:
                    log.warning(
                        "upstream grant %s: taking over a refresh interrupted since %s",
                        row.id,
                        iso(took_over),
                    )
                return Claim(row, now, provider, refresh_token, took_over)

    async def _openable(self, row: storage.CredentialRow, caller: Caller) -> tuple[Provider, str]:
        """The grant's provider and refresh token in clear; RefreshMisconfigured (audited,
        nothing changed) when either is not to be had."""
        event = self._event("upstream_refresh_failed", row, caller)
        opened = self._provider_and_token(row, f"branch {caller.branch_id}", event)
        if isinstance(opened, RefreshError):
            await self._audit_failure(event)
            raise opened
        return opened

    async def _try_claim(self, row: storage.CredentialRow, now: datetime) -> bool:
        lease = timedelta(seconds=self.settings.upstream_refresh_cap + LEASE_MARGIN)

        def claim(db: Session) -> bool:
            refresh_storage.bound_lock_wait(db, self.settings.upstream_timeout)
            return refresh_storage.claim_refresh(db, row, now, now + lease)

        try:
            return await self._write(claim)
        except DBAPIError as exc:
            if not lock_busy(exc):
                raise
            raise RefreshUnavailable("the grant is locked by another transaction") from None

    def _event(
        self, action: str, row: storage.CredentialRow, caller: Caller, **details: object
    ) -> AuditEvent:
        if caller is WORKER:
            details = {"by": "refresh_worker", **details}
        return AuditEvent(
            action,
            caller.context,
            client_id=caller.client_id,
            branch_id=caller.branch_id,
            details={"provider": row.provider, "credential_id": row.id, **details},
        )

    def _claim_details(self, claim: Claim) -> dict[str, object]:
        if claim.took_over is None:
            return {}
        return {"took_over_refresh_started_at": iso(claim.took_over)}

    async def _failed(
        self, claim: Claim, caller: Caller, reason: str, flags: list[str], error_class: str
    ) -> None:
        """End the claim without new tokens: clear the mark, record the failure (of kind
        `error_class`; the worker's retry held back by `freshness.retry_delay`), its audit
        row and, at OAUTH2_UPSTREAM_FAILING_THRESHOLD failures in a row, the
        `upstream.refresh_failing` event, in one transaction."""
        row, settings = claim.row, self.settings
        event = self._event("upstream_refresh_failed", row, caller, reason=reason)
        event.details.update(self._claim_details(claim), error_class=error_class)
        event.flags.extend(flags)

        def fail(db: Session) -> None:
            now = utcnow()
            # the backoff of the failure this makes (the count is only changed under a claim)
            delay = retry_delay(
                row.refresh_failures + 1,
                settings.upstream_refresh_interval,
                settings.upstream_refresh_backoff_max,
            )
            recorded = refresh_storage.fail_refresh(
                db,
                row.id,
                claim.started,
                reason,
                now,
                error_class=error_class,
                retry_at=now + timedelta(seconds=delay),
            )
            if recorded is None:
                return
            record(db, event)
            failures, since = recorded
            if failures == settings.upstream_failing_threshold:
                data = {"attempts": failures, "since": iso(since), "error_class": error_class}
                notify(db, "upstream.refresh_failing", row, data)

        await self._write(fail)

    async def _refused(self, claim: Claim, caller: Caller, exc: UpstreamRejected) -> NeedsConsent:
        """`invalid_grant` (RFC 6749 §5.2): the grant is gone at the provider. Mark it as
        needing consent, with its audit row, in one transaction."""
        row = claim.row
        reason = f"{row.provider} refused the refresh: {printable(exc)}"
        if claim.took_over is not None:
            reason += (
                f" (after a refresh started {iso(claim.took_over)} was interrupted: the "
                "provider may have rotated the refresh token in its lost answer)"
            )
        event = self._event("upstream_refresh_failed", row, caller, reason=reason)
        event.details.update(self._claim_details(claim))
        event.flags.append("needs_consent")

        def mark(db: Session) -> None:
            if refresh_storage.mark_needs_consent(
                db, row.id, reason, utcnow(), started=claim.started
            ):
                record(db, event)
                notify_needs_consent(db, row, "invalid_grant")

        await self._write(mark)
        return NeedsConsent(reason)

    def _provider_and_token(
        self, row: storage.CredentialRow, whose: str, event: AuditEvent
    ) -> tuple[Provider, str] | RefreshError:
        """The grant's provider and its refresh token in clear, or the RefreshMisconfigured
        failure (with its reason in `event`) when either is not to be had."""
        try:
            return self.provider(row.provider), self._open(row, REFRESH)
        except (ProviderNotConfigured, UnknownProvider) as exc:
            event.details["reason"] = printable(exc)
            metrics.UPSTREAM_REFRESHES.labels(row.provider, "misconfigured").inc()
            return RefreshMisconfigured(printable(exc))
        except DecryptionError:
            event.details["reason"] = "stored refresh token does not decrypt"
            metrics.UPSTREAM_REFRESHES.labels(row.provider, "undecryptable").inc()
            return RefreshMisconfigured(
                f"the stored {row.provider} grant of {whose} does not decrypt "
                "(tampered, or its encryption key is gone); reconnect the branch"
            )

    def _store_refresh(
        self, db: Session, claim: Claim, tokens: TokenResponse, caller: Caller, late: bool
    ) -> str | None:
        """Store a refresh's answer while the claim's mark is still its own, with its audit
        row. Returns the needs-consent reason when the answer lacks a scope the provider
        requires (the tokens are stored all the same: a rotated refresh token must not be
        lost), else None."""
        row, provider, now = claim.row, claim.provider, utcnow()
        # Google usually sends no new refresh token: keep the stored one (never null);
        # Microsoft rotates on every use: store the new one, in this transaction.
        rotated = tokens.refresh_token is not None and tokens.refresh_token != claim.refresh_token
        if provider.spec.rotates_refresh_tokens and tokens.refresh_token is None:
            log.warning(
                "%s refresh returned no new refresh token; keeping the stored one", provider.name
            )
        sealed = seal_tokens(
            self.keyring,
            credential_id=row.id,
            provider=row.provider,
            account_sub=row.account_sub,
            access_token=tokens.access_token,
            refresh_token=tokens.refresh_token or claim.refresh_token,
        )
        scope = tokens.scope if tokens.scope is not None else row.scope
        stored = refresh_storage.finish_refresh(
            db,
            row.id,
            claim.started,
            sealed=sealed,
            access_expires_at=now + timedelta(seconds=tokens.expires_in),
            scope=scope,
            now=now,
        )
        if not stored:
            # A new consent (or, past the lease, another refresher) replaced this claim.
            log.warning("upstream grant %s changed during its refresh; answer discarded", row.id)
            return None
        details = {
            "expires_in": tokens.expires_in,
            "refresh_token_rotated": rotated,
            "encryption_key_id": sealed.key_id,
            "after_caller_deadline": late,
            **self._claim_details(claim),
        }
        record(db, self._event("upstream_refreshed", row, caller, **details))
        if row.refresh_failures >= self.settings.upstream_failing_threshold:
            notify(db, "upstream.recovered", row, {"after_attempts": row.refresh_failures})
        lacking = provider.spec.required_scopes - set(scope.split())
        if not lacking:
            return None
        reason = (
            f"{row.provider} refreshed the grant without {' '.join(sorted(lacking))} "
            "(access removed by the account owner?)"
        )
        refresh_storage.mark_needs_consent(db, row.id, reason, now)
        event = self._event("upstream_refresh_failed", row, caller, reason=reason, scope=scope)
        event.flags.extend(["needs_consent", "scope_narrowed"])
        record(db, event)
        notify_needs_consent(db, row, "scope_narrowed")
        return reason
