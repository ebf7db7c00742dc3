"""Branches (`oauth2_branches`) and which clients may broker their upstream tokens
(`oauth2_client_branches`; DESIGN.md "Upstream brokering"): the one service that
validates and changes them, for the admin API and the command line alike.

Each change writes its `admin_branch_*` audit row in its transaction. Connecting and
disconnecting a provider are `upstream.connect` / `upstream.service`.

Raises `registry.errors` FieldInvalid (400), NotFound (404) or Conflict (409).
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from sqlalchemy.orm import Session

from oauth2_server.audit.log import record
from oauth2_server.registry.actor import Actor, before
from oauth2_server.registry.errors import Conflict, FieldInvalid, NotFound, require
from oauth2_server.registry.paging import iso
from oauth2_server.storage import branches as storage
from oauth2_server.storage import upstream as upstream_storage
from oauth2_server.storage import utcnow
from oauth2_server.storage.clients import get_client_view

ALL_BRANCHES = storage.ALL_BRANCHES
_BRANCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")


def validate_branch_id(branch_id: str) -> str:
    """Return `branch_id` if it is 1–100 characters of letters, digits and `._:-` starting
    with a letter or digit; FieldInvalid (`branch_id`) otherwise."""
    if not _BRANCH_ID.fullmatch(branch_id or ""):
        raise FieldInvalid(
            "branch_id",
            f"branch id {branch_id!r} must be 1-100 letters, digits or ._:- "
            "starting with a letter or digit",
        )
    return branch_id


def _check_fields(body: dict[str, Any]) -> None:
    if "name" in body and not body["name"].strip():
        raise FieldInvalid("name", "name must not be empty")
    email = body.get("contact_email")
    if email and "@" not in email:
        raise FieldInvalid("contact_email", f"contact_email {email!r} is not an email address")


def require_branch(session: Session, branch_id: str) -> storage.BranchRecord:
    """The branch with this id. NotFound (`branch_id`)."""
    found = storage.get_branch(session, branch_id)
    return require(found, "branch_id", f"branch {branch_id!r} not found")


def branch_json(session: Session, branch: storage.BranchRecord) -> dict[str, Any]:
    """A branch with the clients granted it and its provider connections (no tokens)."""
    item = asdict(branch)
    item["created_at"], item["updated_at"] = iso(branch.created_at), iso(branch.updated_at)
    item["clients"] = list(storage.clients_granted(session, branch.branch_id) or ())
    now = utcnow()
    item["connections"] = [
        {
            "provider": s.provider,
            "account_email": s.account_email,
            "scope": s.scope,
            "access_expires_at": iso(s.access_expires_at),
            "last_refreshed_at": iso(s.last_refreshed_at),
            "needs_consent": s.needs_consent,
            "consent_error": s.consent_error,
            "grant_shared_by": s.branches_sharing,
            "refresh": s.refresh_state(now),
            "refresh_started_at": iso(s.refresh_started_at),
            "last_refresh_error": s.last_refresh_error,
            "last_refresh_error_at": iso(s.last_refresh_error_at),
            "refresh_failures": s.refresh_failures,
        }
        for s in upstream_storage.connection_status(session, branch.branch_id)
        if s.provider is not None
    ]
    return item


def create_branch(session: Session, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
    """Create an active branch from `body` (`branch_id`, `name`, optional
    `contact_email`, `google_account_id`, `google_location_id`). FieldInvalid for a bad
    id, empty name or email without `@`; Conflict (`branch_id`) if it exists."""
    _check_fields(body)
    validate_branch_id(body["branch_id"])
    if storage.get_branch(session, body["branch_id"]) is not None:
        raise Conflict("branch_id", f"branch {body['branch_id']!r} already exists")
    created = storage.create_branch(session, **{**body, "name": body["name"].strip()})
    record(session, actor.event("admin_branch_created", branch_id=created.branch_id, details=body))
    return branch_json(session, created)


def update_branch(
    session: Session, actor: Actor, branch_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Change any of `name`, `contact_email`, `google_account_id`, `google_location_id`,
    `active` (an empty optional text clears it). NotFound (`branch_id`), FieldInvalid."""
    current = require_branch(session, branch_id)
    _check_fields(body)
    changes = {
        k: (v.strip() or None) if isinstance(v, str) and k != "name" else v for k, v in body.items()
    }
    updated = storage.update_branch(session, branch_id, changes)
    assert updated is not None
    details = {"changes": changes, "before": before(current, changes)}
    record(session, actor.event("admin_branch_updated", branch_id=branch_id, details=details))
    return branch_json(session, updated)


def _grant_event(actor: Actor, action: str, client_id: str, branch_id: str) -> Any:
    """`admin_branch_granted` / `_ungranted`: the client concerned goes in
    `details.target_client_id` (the row's `client_id` is the actor's)."""
    details = {"target_client_id": client_id}
    return actor.event(action, branch_id=branch_id, details=details)


def grant(session: Session, actor: Actor, client_id: str, branch_id: str) -> bool:
    """Let a client broker tokens for a branch (`*`: every branch). False if it already
    had the grant (then nothing is audited). NotFound naming `client_id` or `branch_id`."""
    if get_client_view(session, client_id) is None:
        raise NotFound("client_id", f"client {client_id!r} not found")
    if branch_id != ALL_BRANCHES:
        require_branch(session, branch_id)
    added = storage.grant_branch(session, client_id, branch_id)
    if added:
        record(session, _grant_event(actor, "admin_branch_granted", client_id, branch_id))
    return added


def ungrant(session: Session, actor: Actor, client_id: str, branch_id: str) -> None:
    """Withdraw a grant made by `grant`. FieldInvalid (`branch_id`) if there was none."""
    if not storage.revoke_branch_grant(session, client_id, branch_id):
        raise FieldInvalid(
            "branch_id", f"client {client_id!r} has no grant for branch {branch_id!r}"
        )
    record(session, _grant_event(actor, "admin_branch_ungranted", client_id, branch_id))


def list_branches(session: Session, after: list[Any] | None, limit: int) -> dict[str, Any]:
    """A page of branches by id: `items` and `next_position` (None on the last)."""
    after_id = after[0] if after and isinstance(after[0], str) else None
    rows = storage.list_branches(session, after_id, limit + 1)
    return {
        "items": [branch_json(session, row) for row in rows[:limit]],
        "next_position": [rows[limit - 1].branch_id] if len(rows) > limit else None,
    }


def get_branch(session: Session, branch_id: str) -> dict[str, Any]:
    """One branch's JSON. NotFound (`branch_id`)."""
    return branch_json(session, require_branch(session, branch_id))


def connection_status(
    session: Session, branch_id: str | None
) -> list[upstream_storage.ConnectionStatus]:
    """The upstream connections of one branch (NotFound if unknown), or of every branch
    (`branch_id` None)."""
    if branch_id is not None:
        require_branch(session, branch_id)
    return upstream_storage.connection_status(session, branch_id)
