"""Which clients a branch's tokens belong to (revocation and listing by branch).

Tokens carry no branch: a branch's tokens are those of the clients granted that branch
explicitly (issue 3's `oauth2_client_branches`; a grant of every branch, `*`, does not
count, or revoking one branch would cut off services of every branch).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from oauth2_server.admin.http import not_found
from oauth2_server.storage.branches import clients_granted


def clients_of_branch(session: Session, branch_id: str) -> tuple[str, ...]:
    """Client ids granted `branch_id` explicitly. AdminError 404 (`branch_id`) when the
    branch is unknown."""
    granted = clients_granted(session, branch_id)
    if granted is None:
        raise not_found("branch_id", f"branch {branch_id!r} not found")
    return granted
