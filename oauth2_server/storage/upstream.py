"""Upstream grants (`oauth2_upstream_credentials`) and their links to branches
(DESIGN.md "Upstream brokering"); pending connections are `storage.upstream_states`.

One grant per (provider, account `sub`), linked to many branches. Tokens arrive here
already encrypted (`upstream.sealing`); nothing in this module sees a token in clear.
Security-relevant steps cannot race: a refresh holds `lock_credential` (`SELECT … FOR
UPDATE` on PostgreSQL; on SQLite, a first write that takes the database's single writer
lock) until its transaction ends. Token exchange's reads are `storage.exchange`; the
join of branches to their grants they share with the status listing is
`join_branch_grant`.

A refresh at the provider is not done under that lock: its refresh-in-progress mark and
outcome are `storage.upstream_refresh`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, delete, func, insert, select, update
from sqlalchemy.orm import Session

from oauth2_server.db.models import Branch, BranchUpstreamLink, UpstreamCredential


@dataclass(frozen=True)
class SealedTokens:
    """A grant's access and refresh tokens as ciphertexts under one keyring key (made by
    `upstream.sealing.seal_tokens`)."""

    key_id: str
    access: bytes = field(repr=False)
    refresh: bytes = field(repr=False)


@dataclass(frozen=True)
class CredentialRow:
    """A stored upstream grant; tokens as ciphertext under `encryption_key_id`. Times UTC."""

    id: str
    provider: str
    account_sub: str
    account_email: str | None
    scope: str
    encryption_key_id: str
    access_token_ciphertext: bytes = field(repr=False)
    refresh_token_ciphertext: bytes = field(repr=False)
    access_expires_at: datetime
    needs_consent: bool
    consent_error: str | None
    last_refreshed_at: datetime | None
    refresh_started_at: datetime | None = None
    refresh_lease_until: datetime | None = None
    access_issued_at: datetime | None = None
    last_refresh_error: str | None = None
    last_refresh_error_at: datetime | None = None
    refresh_failures: int = 0
    refresh_failing_since: datetime | None = None
    last_refresh_error_class: str | None = None
    next_refresh_at: datetime | None = None

    def refreshing(self, now: datetime) -> bool:
        """A refresh is in flight at the provider and its lease still holds."""
        return self.refresh_lease_until is not None and self.refresh_lease_until > now

    def interrupted(self, now: datetime) -> bool:
        """A refresh was started and never finished (its process died): the mark is
        still there but its lease is over."""
        return self.refresh_started_at is not None and not self.refreshing(now)


CREDENTIAL_COLUMNS = (
    UpstreamCredential.id,
    UpstreamCredential.provider,
    UpstreamCredential.account_sub,
    UpstreamCredential.account_email,
    UpstreamCredential.scope,
    UpstreamCredential.encryption_key_id,
    UpstreamCredential.access_token_ciphertext,
    UpstreamCredential.refresh_token_ciphertext,
    UpstreamCredential.access_expires_at,
    UpstreamCredential.needs_consent,
    UpstreamCredential.consent_error,
    UpstreamCredential.last_refreshed_at,
    UpstreamCredential.refresh_started_at,
    UpstreamCredential.refresh_lease_until,
    UpstreamCredential.access_issued_at,
    UpstreamCredential.last_refresh_error,
    UpstreamCredential.last_refresh_error_at,
    UpstreamCredential.refresh_failures,
    UpstreamCredential.refresh_failing_since,
    UpstreamCredential.last_refresh_error_class,
    UpstreamCredential.next_refresh_at,
)


def join_branch_grant(stmt: Select[Any], provider: ColumnElement[str] | None = None) -> Select[Any]:
    """`stmt`, whose FROM holds `Branch`, outer-joined to the branch's upstream links (only
    the link to `provider` when given: a column or bound parameter) and each link's grant
    (`UpstreamCredential`). A branch without a link keeps its row, with NULL link and grant
    columns. The one branch-grant join of the status listing and token exchange's reads
    (`storage.exchange`); DESIGN.md "Upstream brokering"."""
    linked = BranchUpstreamLink.branch_id == Branch.branch_id
    if provider is not None:
        linked = and_(linked, BranchUpstreamLink.provider == provider)
    return stmt.outerjoin(BranchUpstreamLink, linked).outerjoin(
        UpstreamCredential, UpstreamCredential.id == BranchUpstreamLink.credential_id
    )


def lock_credential(session: Session, credential_id: str) -> CredentialRow | None:
    """The grant by id, locked until the transaction ends; None if it is gone.

    PostgreSQL: `SELECT … FOR UPDATE`, so concurrent refreshers of one grant queue here,
    across processes. SQLite has no row locks; a first no-op UPDATE makes this
    transaction the database's single writer (others wait `busy_timeout`), which
    serialises refreshers the same way.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(
            update(UpstreamCredential)
            .where(UpstreamCredential.id == credential_id)
            .values(updated_at=UpstreamCredential.updated_at)
        )
    row = session.execute(
        select(*CREDENTIAL_COLUMNS).where(UpstreamCredential.id == credential_id).with_for_update()
    ).first()
    return CredentialRow(*row) if row is not None else None


def find_credential(session: Session, provider: str, account_sub: str) -> CredentialRow | None:
    """The grant of one provider account, locked like `lock_credential` (connecting
    updates it)."""
    found = session.scalar(
        select(UpstreamCredential.id).where(
            UpstreamCredential.provider == provider,
            UpstreamCredential.account_sub == account_sub,
        )
    )
    return lock_credential(session, found) if found is not None else None


def insert_credential(
    session: Session,
    *,
    credential_id: str,
    provider: str,
    account_sub: str,
    account_email: str | None,
    scope: str,
    sealed: SealedTokens,
    access_expires_at: datetime,
    now: datetime,
) -> None:
    """Store a new grant (its id is part of the tokens' associated data)."""
    values = token_values(sealed, access_expires_at, scope, now)
    values.update(id=credential_id, provider=provider, account_sub=account_sub)
    values.update(account_email=account_email, created_at=now)
    values.update(needs_consent=False, consent_error=None, last_refreshed_at=None)
    values.update(refresh_failures=0)
    session.execute(insert(UpstreamCredential).values(values))


def token_values(
    sealed: SealedTokens, access_expires_at: datetime, scope: str, now: datetime
) -> dict[str, object]:
    """The columns every new token response sets (new grant, new consent, refresh)."""
    return {
        "encryption_key_id": sealed.key_id,
        "access_token_ciphertext": sealed.access,
        "refresh_token_ciphertext": sealed.refresh,
        "access_expires_at": access_expires_at,
        "access_issued_at": now,
        "scope": scope,
        "updated_at": now,
    }


def store_tokens(
    session: Session,
    credential_id: str,
    *,
    sealed: SealedTokens,
    access_expires_at: datetime,
    scope: str,
    now: datetime,
    refreshed: bool,
    account_email: str | None = None,
) -> None:
    """Replace a grant's tokens (after a refresh, or a new consent which also clears
    `needs_consent`, the refresh mark, the failure count and backoff: a refresh of the old
    grant still in flight then stores nothing, and the grant's health is `ok`).
    `refreshed` sets `last_refreshed_at`."""
    values = token_values(sealed, access_expires_at, scope, now)
    if refreshed:
        values["last_refreshed_at"] = now
    else:
        values.update(needs_consent=False, consent_error=None, refresh_failures=0)
        values.update(refresh_started_at=None, refresh_lease_until=None)
        values.update(refresh_failing_since=None, next_refresh_at=None)
    if account_email is not None:
        values["account_email"] = account_email
    session.execute(
        update(UpstreamCredential).where(UpstreamCredential.id == credential_id).values(values)
    )


def delete_credential(session: Session, credential_id: str) -> None:
    """Delete a grant and its encrypted tokens (links go with it, ON DELETE CASCADE)."""
    session.execute(
        delete(BranchUpstreamLink).where(BranchUpstreamLink.credential_id == credential_id)
    )
    session.execute(delete(UpstreamCredential).where(UpstreamCredential.id == credential_id))


def link_branch(
    session: Session, branch_id: str, provider: str, credential_id: str, now: datetime
) -> str | None:
    """Point a branch's `provider` connection at a grant. Returns the grant it used
    before if that was another one (the caller may have to remove it), else None."""
    previous = session.scalar(
        select(BranchUpstreamLink.credential_id).where(
            BranchUpstreamLink.branch_id == branch_id, BranchUpstreamLink.provider == provider
        )
    )
    if previous is None:
        session.execute(
            insert(BranchUpstreamLink).values(
                branch_id=branch_id, provider=provider, credential_id=credential_id, linked_at=now
            )
        )
        return None
    session.execute(
        update(BranchUpstreamLink)
        .where(BranchUpstreamLink.branch_id == branch_id, BranchUpstreamLink.provider == provider)
        .values(credential_id=credential_id, linked_at=now)
    )
    return previous if previous != credential_id else None


def unlink_branch(session: Session, branch_id: str, provider: str) -> str | None:
    """Remove a branch's `provider` connection; the grant id it used, or None."""
    return session.execute(
        delete(BranchUpstreamLink)
        .where(BranchUpstreamLink.branch_id == branch_id, BranchUpstreamLink.provider == provider)
        .returning(BranchUpstreamLink.credential_id)
    ).scalar()


def linked_branches(session: Session, credential_id: str) -> list[str]:
    """Branch ids using a grant."""
    return list(
        session.scalars(
            select(BranchUpstreamLink.branch_id)
            .where(BranchUpstreamLink.credential_id == credential_id)
            .order_by(BranchUpstreamLink.branch_id)
        )
    )


# -- status listing ---------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionStatus:
    """One branch and its connection to one provider (provider None: not connected)."""

    branch_id: str
    name: str
    active: bool
    provider: str | None
    credential_id: str | None
    account_email: str | None
    scope: str | None
    access_expires_at: datetime | None
    last_refreshed_at: datetime | None
    needs_consent: bool
    consent_error: str | None
    branches_sharing: int
    refresh_started_at: datetime | None = None
    refresh_lease_until: datetime | None = None
    last_refresh_error: str | None = None
    last_refresh_error_at: datetime | None = None
    refresh_failures: int = 0
    refresh_failing_since: datetime | None = None
    last_refresh_error_class: str | None = None
    next_refresh_at: datetime | None = None
    access_issued_at: datetime | None = None

    def refresh_state(self, now: datetime) -> str | None:
        """`in_progress` (a refresh is at the provider, its lease holds), `interrupted`
        (its process stopped mid-call: the next refresh takes over), or None."""
        if self.refresh_started_at is None:
            return None
        live = self.refresh_lease_until is not None and self.refresh_lease_until > now
        return "in_progress" if live else "interrupted"


def connection_status(session: Session, branch_id: str | None = None) -> list[ConnectionStatus]:
    """Every branch (or one) with each of its provider connections, by branch id."""
    sharing = (
        select(BranchUpstreamLink.credential_id, func.count().label("n"))
        .group_by(BranchUpstreamLink.credential_id)
        .subquery()
    )
    stmt = select(
        Branch.branch_id,
        Branch.name,
        Branch.active,
        BranchUpstreamLink.provider,
        UpstreamCredential.id,
        UpstreamCredential.account_email,
        UpstreamCredential.scope,
        UpstreamCredential.access_expires_at,
        UpstreamCredential.last_refreshed_at,
        UpstreamCredential.needs_consent,
        UpstreamCredential.consent_error,
        sharing.c.n,
        UpstreamCredential.refresh_started_at,
        UpstreamCredential.refresh_lease_until,
        UpstreamCredential.last_refresh_error,
        UpstreamCredential.last_refresh_error_at,
        UpstreamCredential.refresh_failures,
        UpstreamCredential.refresh_failing_since,
        UpstreamCredential.last_refresh_error_class,
        UpstreamCredential.next_refresh_at,
        UpstreamCredential.access_issued_at,
    ).select_from(Branch)
    stmt = (
        join_branch_grant(stmt)
        .outerjoin(sharing, sharing.c.credential_id == UpstreamCredential.id)
        .order_by(Branch.branch_id, BranchUpstreamLink.provider)
    )
    if branch_id is not None:
        stmt = stmt.where(Branch.branch_id == branch_id)
    return [
        ConnectionStatus(  # the columns above, in the dataclass's field order
            *row[:2],
            bool(row[2]),
            *row[3:9],
            bool(row[9]),
            row[10],
            int(row[11] or 0),
            *row[12:16],
            int(row[16] or 0),
            *row[17:],
        )
        for row in session.execute(stmt)
    ]
