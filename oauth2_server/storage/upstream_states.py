"""Pending upstream connections (`oauth2_upstream_states`): the `state` of an
authorization request this server sent to a provider (RFC 6749 §10.12), stored as its
SHA-256, with the PKCE verifier (RFC 7636) as keyring ciphertext. A state is consumed by
one `DELETE … RETURNING`, so of two concurrent callbacks one gets it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime

from sqlalchemy import delete, insert
from sqlalchemy.orm import Session

from oauth2_server.db.models import UpstreamAuthorizationState


@dataclass(frozen=True)
class StateRow:
    """A pending connection attempt: the SHA-256 of its `state`, the provider, branch,
    redirect URI and requested scope, the encrypted PKCE verifier (key id, ciphertext),
    and when it expires (UTC)."""

    state_hash: str = field(repr=False)
    provider: str
    branch_id: str
    redirect_uri: str
    scope: str
    encryption_key_id: str
    code_verifier_ciphertext: bytes = field(repr=False)
    expires_at: datetime


# the columns of a StateRow, in its field order
_COLUMNS = tuple(getattr(UpstreamAuthorizationState, f.name) for f in fields(StateRow))


def save_state(session: Session, pending: StateRow, now: datetime) -> None:
    """Store a pending connection by the SHA-256 of its `state`, created `now` (UTC)."""
    values = {column.key: getattr(pending, column.key) for column in _COLUMNS}
    session.execute(insert(UpstreamAuthorizationState).values({**values, "created_at": now}))


def consume_state(session: Session, state_hash: str) -> StateRow | None:
    """Delete a pending connection and return it (expired or not: the caller checks).
    One `DELETE … RETURNING`: of two concurrent callbacks, one gets the row."""
    row = session.execute(
        delete(UpstreamAuthorizationState)
        .where(UpstreamAuthorizationState.state_hash == state_hash)
        .returning(*_COLUMNS)
    ).first()
    return StateRow(*row) if row is not None else None


def delete_expired_states(session: Session, now: datetime) -> int:
    """Remove pending connections past their expiry; how many."""
    result = session.execute(
        delete(UpstreamAuthorizationState).where(UpstreamAuthorizationState.expires_at <= now)
    )
    return result.rowcount
