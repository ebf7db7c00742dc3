"""The refresh-in-progress mark of an upstream grant (`oauth2_upstream_credentials`) and
the outcome of a refresh (DESIGN.md "Upstream brokering"; issue #14 item 5).

A refresh at the provider is not done under a row lock (a provider call can last
seconds; on SQLite the lock is the whole database's writer lock). It is claimed by one
compare-and-set (`claim_refresh`) that commits a refresh-in-progress mark with a lease,
and finished by one statement that stores its outcome only while the mark is still its
own (`finish_refresh`, `fail_refresh`, `mark_needs_consent`). A new consent clears the
mark (`storage.upstream.store_tokens`), so a refresh of the replaced grant still in
flight stores nothing. Times are UTC.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from oauth2_server.db.models import UpstreamCredential
from oauth2_server.storage.upstream import (
    CREDENTIAL_COLUMNS,
    CredentialRow,
    SealedTokens,
    token_values,
)


def mark_needs_consent(
    session: Session,
    credential_id: str,
    reason: str,
    now: datetime,
    started: datetime | None = None,
) -> bool:
    """Flag a grant the provider refused: its branches need a new consent (`reason`, cut
    to its column's 400 characters, says why). With `started`, only while the refresh mark
    is still that claim's (then the mark is cleared and the failure counted). True if the
    row was flagged."""
    stmt = update(UpstreamCredential).where(UpstreamCredential.id == credential_id)
    values: dict[str, object] = {
        "needs_consent": True,
        "consent_error": reason[:400],
        "updated_at": now,
    }
    if started is not None:
        stmt = stmt.where(UpstreamCredential.refresh_started_at == started)
        values.update(_outcome_values(reason, now))
    return bool(session.execute(stmt.values(values)).rowcount)


def bound_lock_wait(session: Session, seconds: float) -> None:
    """Let this transaction wait at most `seconds` for a row lock (PostgreSQL
    `lock_timeout`, for this transaction only; past it the statement fails with SQLSTATE
    55P03). SQLite has no row locks and its writer lock is only ever held for single
    statements here; there the caller's own deadline is the bound."""
    if session.get_bind().dialect.name != "sqlite":
        session.execute(text(f"SET LOCAL lock_timeout = {max(1, int(seconds * 1000))}"))


def read_credential(session: Session, credential_id: str) -> CredentialRow | None:
    """The grant by id, without a lock (None if it is gone)."""
    row = session.execute(
        select(*CREDENTIAL_COLUMNS).where(UpstreamCredential.id == credential_id)
    ).first()
    return CredentialRow(*row) if row is not None else None


def claim_refresh(
    session: Session, seen: CredentialRow, now: datetime, lease_until: datetime
) -> bool:
    """Set the refresh-in-progress mark (`refresh_started_at = now`, lease to
    `lease_until`) if the grant is still exactly as `seen`: same access token expiry, not
    needing consent, and the same mark (none, or the expired one `seen` had). One
    compare-and-set: of concurrent claimers, across processes, one gets True."""
    mark = UpstreamCredential.refresh_started_at
    stmt = update(UpstreamCredential).where(
        UpstreamCredential.id == seen.id,
        UpstreamCredential.needs_consent.is_(False),
        UpstreamCredential.access_expires_at == seen.access_expires_at,
        mark.is_(None) if seen.refresh_started_at is None else mark == seen.refresh_started_at,
    )
    values = {"refresh_started_at": now, "refresh_lease_until": lease_until, "updated_at": now}
    return bool(session.execute(stmt.values(values)).rowcount)


def _outcome_values(error: str | None, now: datetime) -> dict[str, object]:
    """Columns that end a claim: the mark cleared, and the failure (when `error`)
    recorded and counted, or the count reset."""
    values: dict[str, object] = {"refresh_started_at": None, "refresh_lease_until": None}
    if error is None:
        values["refresh_failures"] = 0
    else:
        values.update(
            last_refresh_error=error[:400],
            last_refresh_error_at=now,
            refresh_failures=UpstreamCredential.refresh_failures + 1,
        )
    return values


def finish_refresh(
    session: Session,
    credential_id: str,
    started: datetime,
    *,
    sealed: SealedTokens,
    access_expires_at: datetime,
    scope: str,
    now: datetime,
) -> bool:
    """Store a refresh's new tokens and clear its mark, only while the mark is still the
    claim made at `started` (a new consent or a takeover since then wins). True if
    stored."""
    values = token_values(sealed, access_expires_at, scope, now)
    values.update(last_refreshed_at=now, **_outcome_values(None, now))
    return _while_claimed(session, credential_id, started, values)


def fail_refresh(
    session: Session, credential_id: str, started: datetime, error: str, now: datetime
) -> bool:
    """End the claim made at `started` without new tokens: clear the mark, record `error`
    (never a token; cut to 400 characters) and count the failure. True if the mark was
    still that claim's."""
    values = {"updated_at": now, **_outcome_values(error, now)}
    return _while_claimed(session, credential_id, started, values)


def _while_claimed(
    session: Session, credential_id: str, started: datetime, values: dict[str, object]
) -> bool:
    """Set `values` on the grant only while its mark is still the claim made at
    `started` (one compare-and-set); True if it was."""
    stmt = update(UpstreamCredential).where(
        UpstreamCredential.id == credential_id,
        UpstreamCredential.refresh_started_at == started,
    )
    return bool(session.execute(stmt.values(values)).rowcount)
