"""Branches (`oauth2_branches`) and which clients may broker tokens for them
(`oauth2_client_branches`; DESIGN.md "Upstream brokering").

A client may exchange for a branch's upstream token only if it is granted that branch
explicitly, or every branch (`*`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from oauth2_server.db.models import Branch, Client, ClientBranchGrant
from oauth2_server.storage import utcnow

ALL_BRANCHES = "*"
_BRANCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")


class BranchError(ValueError):
    """A branch or branch grant request is invalid; the message names the problem."""


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


def validate_branch_id(branch_id: str) -> str:
    """Return `branch_id` if it is 1–100 characters of letters, digits and `._:-` starting
    with a letter or digit; raise BranchError otherwise."""
    if not _BRANCH_ID.fullmatch(branch_id or ""):
        raise BranchError(
            f"branch id {branch_id!r} must be 1-100 letters, digits or ._:- "
            "starting with a letter or digit"
        )
    return branch_id


def create_branch(
    session: Session,
    *,
    branch_id: str,
    name: str,
    contact_email: str | None = None,
    google_account_id: str | None = None,
    google_location_id: str | None = None,
) -> BranchRecord:
    """Create an active branch. Raises BranchError on a bad or taken id or empty name."""
    validate_branch_id(branch_id)
    if not name.strip():
        raise BranchError("name must not be empty")
    if contact_email is not None and "@" not in contact_email:
        raise BranchError(f"contact email {contact_email!r} is not an email address")
    if get_branch(session, branch_id) is not None:
        raise BranchError(f"branch {branch_id!r} already exists")
    now = utcnow()
    session.execute(
        insert(Branch).values(
            branch_id=branch_id,
            name=name.strip(),
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


def list_branches(session: Session) -> list[BranchRecord]:
    """Every branch, by external id."""
    rows = session.execute(select(*BRANCH_COLUMNS).order_by(Branch.branch_id)).all()
    return [BranchRecord(*row) for row in rows]


def set_branch_active(session: Session, branch_id: str, active: bool) -> bool:
    """Activate or deactivate a branch (an inactive branch is refused by token exchange);
    True if it exists."""
    result = session.execute(
        update(Branch)
        .where(Branch.branch_id == branch_id)
        .values(active=active, updated_at=utcnow())
    )
    return result.rowcount > 0


def grant_branch(session: Session, client_id: str, branch_id: str) -> bool:
    """Let `client_id` broker tokens for `branch_id` (or `*`: every branch).

    Returns False if it already had the grant. Raises BranchError for an unknown client
    or branch.
    """
    if session.scalar(select(Client.id).where(Client.client_id == client_id)) is None:
        raise BranchError(f"client {client_id!r} not found")
    if branch_id != ALL_BRANCHES and get_branch(session, branch_id) is None:
        raise BranchError(f"branch {branch_id!r} not found")
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
