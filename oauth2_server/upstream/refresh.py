"""Keeping an upstream grant's access token fresh for token exchange (DESIGN.md
"Upstream brokering" 3): refresh at the provider under the grant's row lock, so that
concurrent exchanges cause one upstream refresh; `invalid_grant` marks the grant as
needing consent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from oauth2_server import metrics
from oauth2_server.audit.log import AuditEvent, RequestContext, record
from oauth2_server.crypto.keyring import DecryptionError
from oauth2_server.storage import upstream as storage
from oauth2_server.storage import utcnow
from oauth2_server.upstream.base import UpstreamBase, printable
from oauth2_server.upstream.client import TokenResponse, UpstreamRejected, UpstreamUnavailable
from oauth2_server.upstream.providers import Provider, ProviderNotConfigured, UnknownProvider
from oauth2_server.upstream.sealing import REFRESH, seal_tokens

log = logging.getLogger(__name__)


def _observe(provider: str, outcome: str, started: float) -> None:
    """Count one call to `provider`'s token endpoint (`oauth2_upstream_refreshes_total`)
    and its latency since `started` (perf_counter seconds)."""
    metrics.UPSTREAM_REFRESHES.labels(provider, outcome).inc()
    metrics.UPSTREAM_DURATION.labels(provider).observe(time.perf_counter() - started)


# -- refresh outcomes (what token exchange turns into RFC 8693 §2.2.2 errors) ------------


class RefreshError(Exception):
    """A grant could not be made fresh; the message is safe to show the client."""


class NeedsConsent(RefreshError):
    """The provider refused the grant (`invalid_grant`): an admin must reconnect."""


class CredentialGone(RefreshError):
    """The branch was disconnected while the exchange ran."""


class RefreshUnavailable(RefreshError):
    """The provider timed out, failed (5xx) or answered unreadably; nothing changed."""


class RefreshMisconfigured(RefreshError):
    """This server cannot refresh: provider not configured, client rejected by the
    provider, or stored ciphertext that does not decrypt."""


class Refreshing(UpstreamBase):
    """Refresh-if-needed with a row lock and an in-process single flight."""

    # -- freshness (DESIGN.md "Upstream brokering" 3) --------------------------------------

    async def ensure_fresh(
        self, credential_id: str, *, client_id: str, branch_id: str, context: RequestContext
    ) -> None:
        """Make grant `credential_id` hold an access token with at least
        OAUTH2_UPSTREAM_MIN_TTL seconds left, refreshing it at the provider if needed.

        Raises NeedsConsent (provider said `invalid_grant`; the grant is now marked, and
        that mark is committed), CredentialGone, RefreshUnavailable (nothing changed) or
        RefreshMisconfigured. Concurrent callers in this process share one attempt.
        """
        task = self._inflight.get(credential_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._refresh(credential_id, client_id, branch_id, context)
            )
            self._inflight[credential_id] = task
            task.add_done_callback(lambda done: self._settled(credential_id, done))
        await asyncio.shield(task)

    def _settled(self, credential_id: str, task: asyncio.Task[None]) -> None:
        if self._inflight.get(credential_id) is task:
            del self._inflight[credential_id]
        if not task.cancelled():
            task.exception()  # retrieved here, so a caller that went away leaves no warning

    def _fresh(self, row: storage.CredentialRow, now: datetime) -> bool:
        return row.access_expires_at - now >= timedelta(seconds=self.settings.upstream_min_ttl)

    async def _refresh(
        self, credential_id: str, client_id: str, branch_id: str, context: RequestContext
    ) -> None:
        async with self.sessionmaker() as session:
            try:
                failure, event = await self._refresh_locked(
                    session, credential_id, client_id, branch_id, context
                )
            except BaseException:
                await session.rollback()
                raise
            if failure is None or isinstance(failure, NeedsConsent):
                await session.commit()  # new tokens, or the needs-consent mark
            else:
                await session.rollback()  # nothing changes
        if failure is not None and event is not None and not isinstance(failure, NeedsConsent):
            await self._audit_failure(event)
        if failure is not None:
            raise failure

    async def _refresh_locked(
        self,
        session: AsyncSession,
        credential_id: str,
        client_id: str,
        branch_id: str,
        context: RequestContext,
    ) -> tuple[RefreshError | None, AuditEvent | None]:
        """Under the grant's lock: re-check, refresh, store. Returns (failure, its audit
        event); a NeedsConsent failure's mark and audit row are already in `session`."""
        row = await session.run_sync(lambda db: storage.lock_credential(db, credential_id))
        if row is None:
            return CredentialGone(f"branch {branch_id} is no longer connected"), None
        if row.needs_consent:
            return NeedsConsent(row.consent_error or "the provider refused the grant"), None
        now = utcnow()
        if self._fresh(row, now):
            return None, None  # refreshed by another request while this one waited
        event = AuditEvent(
            "upstream_refresh_failed",
            context,
            client_id=client_id,
            branch_id=branch_id,
            details={"provider": row.provider, "credential_id": row.id},
        )
        opened = self._provider_and_token(row, branch_id, event)
        if isinstance(opened, RefreshError):
            return opened, event
        provider, refresh_token = opened
        started = time.perf_counter()
        try:
            tokens = await self.client.refresh(provider, refresh_token)
        except UpstreamUnavailable as exc:
            _observe(row.provider, "unavailable", started)
            event.details["reason"] = printable(exc)
            event.flags.append("upstream_unavailable")
            return RefreshUnavailable(printable(exc)), event
        except UpstreamRejected as exc:
            _observe(
                row.provider,
                "needs_consent" if exc.error == "invalid_grant" else "refused",
                started,
            )
            return await self._refused(session, row, exc, event, now), event
        _observe(row.provider, "ok", started)
        await session.run_sync(
            lambda db: self._store_refresh(
                db, row, provider, tokens, refresh_token, now, client_id, branch_id, context
            )
        )
        return None, None

    def _provider_and_token(
        self, row: storage.CredentialRow, branch_id: str, event: AuditEvent
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
                f"the stored {row.provider} grant of branch {branch_id} does not decrypt "
                "(tampered, or its encryption key is gone); reconnect the branch"
            )

    async def _refused(
        self,
        session: AsyncSession,
        row: storage.CredentialRow,
        exc: UpstreamRejected,
        event: AuditEvent,
        now: datetime,
    ) -> RefreshError:
        """The failure for a refresh the provider refused (RFC 6749 §5.2). `invalid_grant`
        marks the grant as needing consent, with its audit row, in `session`: NeedsConsent;
        any other error changes nothing: RefreshMisconfigured."""
        if exc.error != "invalid_grant":
            event.details["reason"] = printable(exc)
            return RefreshMisconfigured(
                f"{row.provider} refused this server's refresh request ({printable(exc)})"
            )
        reason = f"{row.provider} refused the refresh: {printable(exc)}"
        event.details["reason"] = reason
        event.flags.append("needs_consent")

        def mark(db: Session) -> None:
            storage.mark_needs_consent(db, row.id, reason, now)
            record(db, event)

        await session.run_sync(mark)
        return NeedsConsent(reason)

    def _store_refresh(
        self,
        db: Session,
        row: storage.CredentialRow,
        provider: Provider,
        tokens: TokenResponse,
        old_refresh_token: str,
        now: datetime,
        client_id: str,
        branch_id: str,
        context: RequestContext,
    ) -> None:
        # Google usually sends no new refresh token: keep the stored one (never null);
        # Microsoft rotates on every use: store the new one, in this transaction.
        rotated = tokens.refresh_token is not None and tokens.refresh_token != old_refresh_token
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
            refresh_token=tokens.refresh_token or old_refresh_token,
        )
        expires_at = now + timedelta(seconds=tokens.expires_in)
        storage.store_tokens(
            db,
            row.id,
            sealed=sealed,
            access_expires_at=expires_at,
            scope=tokens.scope if tokens.scope is not None else row.scope,
            now=now,
            refreshed=True,
        )
        record(
            db,
            AuditEvent(
                "upstream_refreshed",
                context,
                client_id=client_id,
                branch_id=branch_id,
                details={
                    "provider": row.provider,
                    "credential_id": row.id,
                    "expires_in": tokens.expires_in,
                    "refresh_token_rotated": rotated,
                    "encryption_key_id": sealed.key_id,
                },
            ),
        )
