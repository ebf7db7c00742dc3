"""Signed retention records (issue #11 item 5): every removal of sealed audit rows by
retention (a month partition dropped on PostgreSQL, a batch purged on SQLite) writes one
`oauth2_audit_retention` row in the same transaction, moving the chain's anchor.

The record's `statement` is a compact JWS (`audit.signing`, header
`typ: audit-retention+jwt`) of

    {"first_seq": F, "last_seq": L, "rows": L-F+1, "last_hash": "<row_hash of L>",
     "from": "<oldest removed created_at>", "to": "<newest removed created_at>",
     "prev_anchor": {"seq": F-1, "hash": "<anchor before>"},
     "policy_days": D, "by": "<who ran it>", "partitions": [...], "time": "...", "iat": …}

Records chain: each starts where the previous ended (`prev_anchor`), the first where the
chain's `baseline` is (the anchor when records began, migration 0009), and the last ends
at the current anchor. `audit verify` accepts an anchor, or a gap at the start of the
chain, only where such a signed record covers exactly it: a prefix deleted or a
partition dropped with the anchor moved by hand has none.

Removal only ever takes a prefix of the chain (seq anchor+1..L, all sealed), so one
record describes it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from oauth2_server.audit.chain import ChainState, move_anchor
from oauth2_server.audit.checkpoints import iso
from oauth2_server.audit.signing import SigningKey, sign_statement
from oauth2_server.db.models import AuditRetention

RETENTION_TYP = "audit-retention+jwt"


@dataclass(frozen=True)
class Removal:
    """Sealed rows about to be removed: seq `first_seq`–`last_seq` (`rows`), created
    `from_at`–`to_at` (UTC); `last` has the last row's `seal_seq`, `row_hash`,
    `created_at` and `id` (the new anchor)."""

    first_seq: int
    last_seq: int
    rows: int
    from_at: datetime
    to_at: datetime
    last: Any
    partitions: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Policy:
    """Who removes rows and under which rule: `days` of retention, `actor` (e.g.
    `janitor (cli: alice@host, unauthenticated)`), `signer` (the issuer's current key)."""

    days: int
    actor: str
    signer: SigningKey


def record_removal(
    session: Session, state: ChainState, removal: Removal, policy: Policy
) -> dict[str, Any]:
    """Sign and insert the retention record of `removal` and move the chain's anchor to
    its last row, in the caller's transaction (holding `lock_chain`, before the rows
    are deleted or dropped). Returns the record as JSON (for the sink)."""
    now = datetime.now(UTC)
    payload = {
        "first_seq": removal.first_seq,
        "last_seq": removal.last_seq,
        "rows": removal.rows,
        "last_hash": removal.last.row_hash,
        "from": iso(removal.from_at),
        "to": iso(removal.to_at),
        "prev_anchor": {"seq": state.anchor_seq, "hash": state.anchor_hash},
        "policy_days": policy.days,
        "by": policy.actor,
        "partitions": removal.partitions,
        "time": iso(now),
    }
    statement = sign_statement(policy.signer, RETENTION_TYP, payload)
    session.add(
        AuditRetention(
            first_seq=removal.first_seq,
            last_seq=removal.last_seq,
            rows=removal.rows,
            from_at=removal.from_at,
            to_at=removal.to_at,
            last_hash=removal.last.row_hash,
            policy_days=policy.days,
            actor=policy.actor[:200],
            created_at=now,
            kid=policy.signer.kid,
            statement=statement,
        )
    )
    session.flush()
    move_anchor(session, state, removal.last)
    return {"type": "retention", **payload, "kid": policy.signer.kid, "jws": statement}


def all_records(session: Session) -> list[Any]:
    """Every retention record, by `first_seq`: what `audit verify` and
    `audit checkpoints --retention` read."""
    return list(session.scalars(select(AuditRetention).order_by(AuditRetention.first_seq)).all())


def record_json(row: Any) -> dict[str, Any]:
    """A stored record as `audit checkpoints --retention` lists it."""
    return {
        "type": "retention",
        "first_seq": row.first_seq,
        "last_seq": row.last_seq,
        "rows": row.rows,
        "from": iso(row.from_at),
        "to": iso(row.to_at),
        "last_hash": row.last_hash,
        "policy_days": row.policy_days,
        "by": row.actor,
        "time": iso(row.created_at),
        "kid": row.kid,
        "jws": row.statement,
    }
