"""The refresh-in-progress mark of an upstream grant (`oauth2_upstream_credentials`) and
the outcome of a refresh (DESIGN.md "Upstream brokering"; issue #14 item 5).

A refresh at the provider is not done under a row lock (a provider call can last
seconds; on SQLite the lock is the whole database's writer lock). It is claimed by one
compare-and-set (`claim_refresh`) that commits a refresh-in-progress mark with a lease,
and finished by one statement that stores its outcome only while the mark is still its
own (`finish_refresh`, `fail_refresh`, `mark_needs_consent`). A new consent clears the
mark (`storage.upstream.store_tokens`), so a refresh of the replaced grant still in
flight stores nothing. Times are UTC.

The proactive refresh worker (issue #14 item 1) claims the grants it refreshes with
`claim_due`: the same mark, set on rows it holds `FOR UPDATE SKIP LOCKED`, so instances
share the due grants out instead of queueing on them. A failed refresh records its kind
and the time the worker may retry (`next_refresh_at`, backoff): the grant's health
(`upstream.health`) is read from these columns (`grants`, `grant_counts`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import false, func, or_, select, text, update
from sqlalchemy.orm import Session

from oauth2_server.db.models import BranchUpstreamLink, UpstreamCredential
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
    error_class: str = "invalid_grant",
) -> bool:
    """Flag a grant the provider refused: its branches need a new consent (`reason`, cut
    to its column's 400 characters, says why). With `started`, only while the refresh mark
    is still that claim's (then the mark is cleared and the failure, of `error_class`,
    counted). True if the row was flagged."""
    stmt = update(UpstreamCredential).where(UpstreamCredential.id == credential_id)
    values: dict[str, object] = {
        "needs_consent": True,
        "consent_error": reason[:400],
        "updated_at": now,
    }
    if started is not None:
        stmt = stmt.where(UpstreamCredential.refresh_started_at == started)
        values.update(_outcome_values(reason, now, error_class))
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


def _outcome_values(
    error: str | None,
    now: datetime,
    error_class: str | None = None,
    retry_at: datetime | None = None,
) -> dict[str, object]:
    """Columns that end a claim: the mark cleared, and the failure (when `error`)
    recorded and counted (its kind `error_class`, ≤ 40 characters; the run of failures
    dated from its first; the worker's retry not before `retry_at`), or the count, the
    run and the backoff reset."""
    values: dict[str, object] = {"refresh_started_at": None, "refresh_lease_until": None}
    if error is None:
        values.update(refresh_failures=0, refresh_failing_since=None, next_refresh_at=None)
    else:
        values.update(
            last_refresh_error=error[:400],
            last_refresh_error_at=now,
            last_refresh_error_class=(error_class or "error")[:40],
            refresh_failures=UpstreamCredential.refresh_failures + 1,
            refresh_failing_since=func.coalesce(UpstreamCredential.refresh_failing_since, now),
            next_refresh_at=retry_at,
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
    session: Session,
    credential_id: str,
    started: datetime,
    error: str,
    now: datetime,
    *,
    error_class: str,
    retry_at: datetime | None = None,
) -> tuple[int, datetime] | None:
    """End the claim made at `started` without new tokens: clear the mark, record `error`
    (never a token; cut to 400 characters) of kind `error_class`, count the failure and
    hold the worker's next try until `retry_at` (backoff). Returns the failures in a row
    and the time of the first of them, or None if the mark was no longer that claim's."""
    values = {"updated_at": now, **_outcome_values(error, now, error_class, retry_at)}
    stmt = (
        update(UpstreamCredential)
        .where(
            UpstreamCredential.id == credential_id,
            UpstreamCredential.refresh_started_at == started,
        )
        .values(values)
        .returning(UpstreamCredential.refresh_failures, UpstreamCredential.refresh_failing_since)
    )
    row = session.execute(stmt).first()
    return (int(row[0]), row[1]) if row is not None else None


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


# -- the proactive refresh worker (issue #14 item 1) -------------------------------------


def claim_due(
    session: Session,
    now: datetime,
    ahead: timedelta,
    lease_until: datetime,
    *,
    limit: int,
    due: Callable[[CredentialRow], bool],
) -> list[CredentialRow]:
    """Claim up to `limit` grants for the refresh worker: not needing consent, access
    token expiring within `ahead` of `now` (soonest first), past their backoff
    (`next_refresh_at`), no live refresh mark, and `due(row)` (the caller's exact rule).
    Each gets the refresh-in-progress mark (`refresh_started_at = now`, lease to
    `lease_until`) in this transaction; the claims are the rows returned.

    PostgreSQL: the candidates are locked `FOR UPDATE SKIP LOCKED`, so concurrent workers
    (and on-demand refreshers, whose claim is an UPDATE of the same row) never wait for
    one another and never claim one grant twice. SQLite has no row locks: a first write
    makes this transaction the single writer until it commits."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(
            update(UpstreamCredential).where(false()).values(updated_at=now)
        )  # takes the writer lock before reading
    stmt = (
        select(*CREDENTIAL_COLUMNS)
        .where(
            UpstreamCredential.needs_consent.is_(False),
            UpstreamCredential.access_expires_at <= now + ahead,
            or_(
                UpstreamCredential.next_refresh_at.is_(None),
                UpstreamCredential.next_refresh_at <= now,
            ),
            or_(
                UpstreamCredential.refresh_lease_until.is_(None),
                UpstreamCredential.refresh_lease_until <= now,
            ),
        )
        .order_by(UpstreamCredential.access_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = [CredentialRow(*row) for row in session.execute(stmt)]
    return [row for row in rows if due(row) and claim_refresh(session, row, now, lease_until)]


@dataclass(frozen=True)
class GrantRow:
    """An upstream grant's health columns and the branches linked to it (no tokens)."""

    id: str
    provider: str
    account_email: str | None
    access_expires_at: datetime
    access_issued_at: datetime | None
    last_refreshed_at: datetime | None
    needs_consent: bool
    consent_error: str | None
    refresh_failures: int
    refresh_failing_since: datetime | None
    last_refresh_error_class: str | None
    last_refresh_error_at: datetime | None
    next_refresh_at: datetime | None
    refresh_started_at: datetime | None
    branches: tuple[str, ...]


def grants(session: Session, provider: str | None = None, limit: int = 1000) -> list[GrantRow]:
    """Upstream grants by provider and id (only `provider`'s when given; at most `limit`),
    each with its linked branch ids."""
    c = UpstreamCredential
    stmt = select(
        c.id,
        c.provider,
        c.account_email,
        c.access_expires_at,
        c.access_issued_at,
        c.last_refreshed_at,
        c.needs_consent,
        c.consent_error,
        c.refresh_failures,
        c.refresh_failing_since,
        c.last_refresh_error_class,
        c.last_refresh_error_at,
        c.next_refresh_at,
        c.refresh_started_at,
    ).order_by(c.provider, c.id)
    if provider is not None:
        stmt = stmt.where(c.provider == provider)
    rows = list(session.execute(stmt.limit(limit)))
    links: dict[str, list[str]] = {}
    ids = [row[0] for row in rows]
    for start in range(0, len(ids), 500):
        found = session.execute(
            select(BranchUpstreamLink.credential_id, BranchUpstreamLink.branch_id)
            .where(BranchUpstreamLink.credential_id.in_(ids[start : start + 500]))
            .order_by(BranchUpstreamLink.branch_id)
        )
        for credential_id, branch_id in found:
            links.setdefault(credential_id, []).append(branch_id)
    return [
        GrantRow(
            *row[:6], bool(row[6]), row[7], int(row[8] or 0), *row[9:], tuple(links.get(row[0], ()))
        )
        for row in rows
    ]


def grant_counts(session: Session) -> list[tuple[str, bool, bool, int]]:
    """(provider, needs_consent, failing, grants) for each combination present, where
    `failing` is "at least one failed refresh in a row" (`upstream.health` turns these
    into states). One grouped read of the grants table."""
    c = UpstreamCredential
    failing = c.refresh_failures > 0
    stmt = select(c.provider, c.needs_consent, failing, func.count()).group_by(
        c.provider, c.needs_consent, failing
    )
    return [(row[0], bool(row[1]), bool(row[2]), int(row[3])) for row in session.execute(stmt)]
