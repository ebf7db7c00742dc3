"""Single-use JWT ids across the deployment (`oauth2_used_jtis`): DPoP proofs (RFC 9449
§11.1) and, later, client assertions (RFC 7523 §3 item 7).

A `jti` is claimed by inserting its key's SHA-256 with `ON CONFLICT DO NOTHING`: of two
requests carrying the same one, on any worker or instance, exactly one inserts the row.
Rows are kept until `expires_at` (past which the proof or assertion is refused anyway by
its time checks); the janitor deletes them after.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from oauth2_server.db.models import UsedJti


def claim_jti(session: Session, key: str, expires_at: datetime) -> bool:
    """Record `key` (e.g. `dpop:<jkt>:<jti>`) as used until `expires_at` (UTC). True when
    this call recorded it, False when it was already recorded (a replay)."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = (
        insert(UsedJti)
        .values(jti_hash=digest, expires_at=expires_at)
        .on_conflict_do_nothing(index_elements=["jti_hash"])
        .returning(UsedJti.jti_hash)
    )
    return session.execute(stmt).first() is not None


def delete_expired_jtis(session: Session, now: datetime) -> int:
    """Delete claims that ended before `now` (UTC). Returns rows deleted."""
    return session.execute(delete(UsedJti).where(UsedJti.expires_at < now)).rowcount
