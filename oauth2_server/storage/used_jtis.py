"""Single-use JWT ids across the deployment (`oauth2_used_jtis`): DPoP proofs (RFC 9449
§11.1, keys `dpop:<jkt>:<jti>`) and `private_key_jwt` client assertions (RFC 7523 §3 item
7, keys `client_assertion:<client_id>:<jti>`, `oauth.assertion_auth`).

A `jti` is claimed by inserting its key's SHA-256 with `ON CONFLICT DO NOTHING`: of two
requests carrying the same one, on any worker or instance, exactly one inserts the row.
Rows are kept until `expires_at` (past which the proof or assertion is refused anyway by
its time checks); the janitor deletes them after.

Two writers bind this module's rule (`jti_digest`, the table `UsedJti`): `claim_jti` in a
session (SQLite, and the request's transaction), and on PostgreSQL the hot path's
coalesced `CLAIM_MANY_SQL` (`storage.fastpath_pg.PgFastStore.claim_jti`, one autocommitted
statement for every claim that arrives meanwhile).
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from oauth2_server.db.models import UsedJti

_TABLE = UsedJti.__table__

# Many claims in one statement (PostgreSQL): $1 the digests (distinct), $2 their
# `expires_at`; returns the digests this statement recorded (the others were recorded
# before: replays). Identifiers come from the model; every value is bound.
CLAIM_MANY_SQL = (
    f"INSERT INTO {_TABLE.name} ({_TABLE.c.jti_hash.name}, {_TABLE.c.expires_at.name}) "  # noqa: S608
    "SELECT * FROM unnest($1::text[], $2::timestamptz[]) "
    f"ON CONFLICT ({_TABLE.c.jti_hash.name}) DO NOTHING RETURNING {_TABLE.c.jti_hash.name}"
)


def jti_digest(key: str) -> str:
    """The row's name for `key`: SHA-256 hex (64 characters) of its UTF-8."""
    return hashlib.sha256(key.encode()).hexdigest()


def claim_jti(session: Session, key: str, expires_at: datetime) -> bool:
    """Record `key` (e.g. `dpop:<jkt>:<jti>`) as used until `expires_at` (UTC). True when
    this call recorded it, False when it was already recorded (a replay)."""
    digest = jti_digest(key)
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
