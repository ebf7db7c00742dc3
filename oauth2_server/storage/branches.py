"""Branches (`oauth2_branches`) and which clients may broker tokens for them
(`oauth2_client_branches`; DESIGN.md "Upstream brokering").

A client may exchange for a branch's upstream token only if it is granted that branch
explicitly, or every branch (`*`). The rules (ids, names, which client and branch exist)
are `registry.branches`; this module reads and writes rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from oauth2_server.db.models import Branch, ClientBranchGrant
from oauth2_server.storage import utcnow

ALL_BRANCHES = "*"
UPDATABLE = ("name", "contact_email", "google_account_id", "google_location_id", "active")


@dataclass(frozen=True)
class BranchRecord:
    """A branch row. `branch_id` is the external id; the Google ids are optional."""

    branch_id: str
    name: str
    contact_email: str | None
    google_account_id: str | None
    google_location_id: str | None
    active: bool
    created_at: datetime
    updated_at: datetime


BRANCH_COLUMNS = (  # the fields of BranchRecord, in order
    Branch.branch_id,
    Branch.name,
    Branch.contact_email,
    Branch.google_account_id,
    Branch.google_location_id,
    Branch.active,
    Branch.created_at,
    Branch.updated_at,
)


def create_branch(
    session: Session,
    *,
    branch_id: str,
    name: str,
    contact_email: str | None = None,
    google_account_id: str | None = None,
    google_location_id: str | None = None,
) -> BranchRecord:
    """Insert an active branch whose data the caller validated (`registry.branches`);
    empty optional fields are stored as NULL."""
    now = utcnow()
    session.execute(
        insert(Branch).values(
            branch_id=branch_id,
            name=name,
            contact_email=contact_email or None,
            google_account_id=google_account_id or None,
            google_location_id=google_location_id or None,
            active=True,
            created_at=now,
            updated_at=now,
        )
    )
    record = get_branch(session, branch_id)
    assert record is not None
    return record


def get_branch(session: Session, branch_id: str) -> BranchRecord | None:
    """The branch with this external id, or None."""
    row = session.execute(select(*BRANCH_COLUMNS).where(Branch.branch_id == branch_id)).first()
    return BranchRecord(*row) if row else None


def list_branches(
    session: Session, after: str | None = None, limit: int | None = None
) -> list[BranchRecord]:
    """Branches by external id: every one, or up to `limit` after `after` (a page)."""
    stmt = select(*BRANCH_COLUMNS).order_by(Branch.branch_id).limit(limit)
    if after is not None:
        stmt = stmt.where(Branch.branch_id > after)
    return [BranchRecord(*row) for row in session.execute(stmt)]


def update_branch(session: Session, branch_id: str, changes: dict[str, Any]) -> BranchRecord | None:
    """Apply validated `changes` (keys from UPDATABLE); None if the branch is unknown."""
    values = {key: changes[key] for key in UPDATABLE if key in changes}
    result = session.execute(
        update(Branch).where(Branch.branch_id == branch_id).values(**values, updated_at=utcnow())
    )
    return get_branch(session, branch_id) if result.rowcount else None


def set_branch_active(session: Session, branch_id: str, active: bool) -> bool:
    """Activate or deactivate a branch (an inactive branch is refused by token exchange);
    True if it exists."""
    return update_branch(session, branch_id, {"active": active}) is not None


def grant_branch(session: Session, client_id: str, branch_id: str) -> bool:
    """Let `client_id` broker tokens for `branch_id` (or `*`: every branch), both known
    (checked by the caller, `registry.branches`). False if it already had the grant."""
    exists = session.scalar(
        select(ClientBranchGrant.id).where(
            ClientBranchGrant.client_id == client_id, ClientBranchGrant.branch_id == branch_id
        )
    )
    if exists is not None:
        return False
    session.execute(
        insert(ClientBranchGrant).values(
            client_id=client_id, branch_id=branch_id, created_at=utcnow()
        )
    )
    return True


def revoke_branch_grant(session: Session, client_id: str, branch_id: str) -> bool:
    """Withdraw a grant made by `grant_branch`; True if there was one."""
    result = session.execute(
        delete(ClientBranchGrant).where(
            ClientBranchGrant.client_id == client_id, ClientBranchGrant.branch_id == branch_id
        )
    )
    return result.rowcount > 0


def clients_granted(session: Session, branch_id: str) -> tuple[str, ...] | None:
    """Client ids granted `branch_id` explicitly (not through `*`), sorted; None if the
    branch does not exist. (What revocation and listing by branch act on.)"""
    if get_branch(session, branch_id) is None:
        return None
    rows = session.scalars(
        select(ClientBranchGrant.client_id)
        .where(ClientBranchGrant.branch_id == branch_id)
        .order_by(ClientBranchGrant.client_id)
    ).all()
    return tuple(rows)


def branch_grants(session: Session) -> dict[str, list[str]]:
    """branch id (or `*`) → client ids granted it, for listings."""
    grants: dict[str, list[str]] = {}
    rows = session.execute(
        select(ClientBranchGrant.branch_id, ClientBranchGrant.client_id).order_by(
            ClientBranchGrant.branch_id, ClientBranchGrant.client_id
        )
    ).all()
    for branch_id, client_id in rows:
        grants.setdefault(branch_id, []).append(client_id)
    return grants


def branches_of_clients(session: Session, client_ids: Sequence[str]) -> dict[str, list[str]]:
    """client id → branch ids it is granted (`*` for every branch), sorted."""
    grants: dict[str, list[str]] = {client_id: [] for client_id in client_ids}
    if client_ids:
        rows = session.execute(
            select(ClientBranchGrant.client_id, ClientBranchGrant.branch_id)
            .where(ClientBranchGrant.client_id.in_(client_ids))
            .order_by(ClientBranchGrant.branch_id)
        )
        for client_id, branch_id in rows:
            grants[client_id].append(branch_id)
    return grants


def unknown_branches(session: Session, branch_ids: Iterable[str]) -> list[str]:
    """The ids among `branch_ids` (other than `*`) that name no branch."""
    wanted = {b for b in branch_ids if b != ALL_BRANCHES}
    if not wanted:
        return []
    known = set(session.scalars(select(Branch.branch_id).where(Branch.branch_id.in_(wanted))))
    return sorted(wanted - known)


def set_client_branches(session: Session, client_id: str, branch_ids: Sequence[str]) -> None:
    """Make the client's branch grants exactly `branch_ids` (validated by the caller)."""
    session.execute(
        delete(ClientBranchGrant).where(
            ClientBranchGrant.client_id == client_id,
            ClientBranchGrant.branch_id.not_in(list(branch_ids)),
        )
    )
    for branch_id in dict.fromkeys(branch_ids):
        grant_branch(session, client_id, branch_id)
