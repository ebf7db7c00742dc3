"""Changing branches and clients' branch grants from the admin API, on top of
`storage.branches` (issue 3's tables `oauth2_branches`, `oauth2_client_branches`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from oauth2_server.db.models import Branch, ClientBranchGrant
from oauth2_server.storage import utcnow
from oauth2_server.storage.branches import (
    ALL_BRANCHES,
    BRANCH_COLUMNS,
    BranchRecord,
    get_branch,
    grant_branch,
)

UPDATABLE = ("name", "contact_email", "google_account_id", "google_location_id", "active")


def list_branches_after(session: Session, after: str | None, limit: int) -> list[BranchRecord]:
    """Up to `limit` branches ordered by `branch_id`, after `after`."""
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
