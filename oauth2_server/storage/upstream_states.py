"""Pending upstream connections (`oauth2_upstream_states`): the `state` of an
authorization request this server sent to a provider (RFC 6749 §10.12), stored as its
SHA-256, with the PKCE verifier (RFC 7636) as keyring ciphertext. A state is consumed by
one `DELETE … RETURNING`, so of two concurrent callbacks one gets it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, insert
from sqlalchemy.orm import Session

from oauth2_server.db.models import UpstreamAuthorizationState


@dataclass(frozen=True)
class StateRow:
    """A consumed connection attempt: the branch, provider, redirect URI and requested
    scope, the encrypted PKCE verifier, and when it expired (UTC)."""

    state_hash: str = field(repr=False)
    provider: str
    branch_id: str
    redirect_uri: str
    scope: str
    encryption_key_id: str
    code_verifier_ciphertext: bytes = field(repr=False)
    expires_at: datetime


def save_state(
    session: Session,
    *,
    state_hash: str,
    provider: str,
    branch_id: str,
    redirect_uri: str,
    scope: str,
    encryption_key_id: str,
    code_verifier_ciphertext: bytes,
    now: datetime,
    expires_at: datetime,
) -> None:
    """Store a pending connection by the SHA-256 of its `state`."""
    session.execute(
        insert(UpstreamAuthorizationState).values(
            state_hash=state_hash,
            provider=provider,
            branch_id=branch_id,
            redirect_uri=redirect_uri,
            scope=scope,
            encryption_key_id=encryption_key_id,
            code_verifier_ciphertext=code_verifier_ciphertext,
            created_at=now,
            expires_at=expires_at,
        )
    )


def consume_state(session: Session, state_hash: str) -> StateRow | None:
    """Delete a pending connection and return it (expired or not: the caller checks).
    One `DELETE … RETURNING`: of two concurrent callbacks, one gets the row."""
    t = UpstreamAuthorizationState
    row = session.execute(
        delete(t)
        .where(t.state_hash == state_hash)
        .returning(
            t.state_hash,
            t.provider,
            t.branch_id,
            t.redirect_uri,
            t.scope,
            t.encryption_key_id,
            t.code_verifier_ciphertext,
            t.expires_at,
        )
    ).first()
    return StateRow(*row) if row is not None else None


def delete_expired_states(session: Session, now: datetime) -> int:
    """Remove pending connections past their expiry; how many."""
    result = session.execute(
        delete(UpstreamAuthorizationState).where(UpstreamAuthorizationState.expires_at <= now)
    )
    return result.rowcount
