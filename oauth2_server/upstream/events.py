"""Webhook events of upstream grant health transitions (issue #14 items 2-3), enqueued in
the transaction of the change they announce (`storage.outbox`, delivered at least once).

- `branch.needs_consent`, one per branch linked to the grant (subject `branch:<id>`);
- `upstream.refresh_failing` when OAUTH2_UPSTREAM_FAILING_THRESHOLD refreshes in a row
  have failed, and `upstream.recovered` on the success after it (subject
  `upstream_grant:<credential id>`).

Payloads name the provider, grant and branches, never a token or the account's email.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from oauth2_server.storage import outbox
from oauth2_server.storage import upstream as storage

MAX_BRANCHES = 20  # branch ids one grant event lists (the outbox bounds an event's size)


def notify(
    session: Session, event_type: str, row: storage.CredentialRow, data: dict[str, Any]
) -> None:
    """Enqueue `event_type` about grant `row` in `session`'s transaction, with `data` (no
    tokens) and the branches linked to the grant."""
    branches = storage.linked_branches(session, row.id)
    payload = {
        "provider": row.provider,
        "credential_id": row.id,
        "branches": branches[:MAX_BRANCHES],
        "branches_total": len(branches),
        **data,
    }
    outbox.enqueue_event(session, event_type, f"upstream_grant:{row.id}", payload)


def notify_needs_consent(session: Session, row: storage.CredentialRow, reason_class: str) -> None:
    """Enqueue `branch.needs_consent` for every branch linked to grant `row` (`reason_class`:
    `invalid_grant` or `scope_narrowed`) in `session`'s transaction."""
    for branch_id in storage.linked_branches(session, row.id):
        outbox.enqueue_event(
            session,
            "branch.needs_consent",
            f"branch:{branch_id}",
            {
                "branch_id": branch_id,
                "provider": row.provider,
                "credential_id": row.id,
                "reason": reason_class,
            },
        )
