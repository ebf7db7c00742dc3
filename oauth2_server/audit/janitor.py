"""`oauth2-server janitor`: housekeeping safe to run from several machines at once.

One run, in this order:

1. PostgreSQL: create the audit partitions of this month and the next `MONTHS_AHEAD`
   and move rows out of the default partition (`audit_partitions`, advisory lock).
2. Seal audit rows older than `OAUTH2_AUDIT_SEAL_DELAY` into the hash chain.
3. Retention: audit rows older than `OAUTH2_AUDIT_RETENTION_DAYS` go, once sealed: whole
   month partitions on PostgreSQL, batches of rows on SQLite; the chain's anchor moves
   to the last removed row.
4. Delete expired authorization codes (kept `CODE_REPLAY_WINDOW` seconds past expiry so
   a replay is still recognised), expired access-token rows, and refresh-token rows of
   families whose every token has expired.
5. Delete failure-limiter counters (`oauth2_auth_failures`) whose window has ended.

Deletions run `OAUTH2_JANITOR_BATCH_SIZE` rows per transaction, each batch one
`DELETE … WHERE key IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)` (SQLite serialises
writers instead), so locks are short and concurrent janitors delete disjoint rows: the
sum of their counts is the number of rows removed. Each batch writes an `expired` audit
row in its own transaction.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, exists, select, tuple_
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, aliased

from oauth2_server.audit import partitions as audit_partitions
from oauth2_server.audit.chain import lock_chain, move_anchor, seal_pending
from oauth2_server.audit.log import AuditEvent, record
from oauth2_server.config import Settings
from oauth2_server.db.models import (
    AccessToken,
    AuthorizationCode,
    RefreshToken,
    TokenLog,
)
from oauth2_server.storage.auth_failures import delete_ended
from oauth2_server.storage.upstream_states import delete_expired_states

log = logging.getLogger("oauth2_server.janitor")

MONTHS_AHEAD = 2
CODE_REPLAY_WINDOW = 3600  # seconds a consumed code is kept past its expiry


@dataclass
class JanitorReport:
    """What one run did: rows deleted per table, audit rows sealed and removed, and
    partitions created or dropped; `skipped` lists steps left to a concurrent janitor or
    retried next run (lock timeouts)."""

    deleted: dict[str, int] = field(default_factory=dict)
    sealed: int = 0
    audit_rows_removed: int = 0
    partitions_created: list[str] = field(default_factory=list)
    partitions_dropped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _expired_keys(table: str, now: datetime, limit: int) -> Select[Any]:
    """Primary keys of up to `limit` expired rows of `table`, locked, skipping rows
    another janitor holds."""
    if table == "oauth2_authorization_codes":
        cutoff = now - timedelta(seconds=CODE_REPLAY_WINDOW)
        stmt = select(AuthorizationCode.id).where(AuthorizationCode.expires_at < cutoff)
    elif table == "oauth2_access_tokens":
        stmt = select(AccessToken.jti).where(AccessToken.expires_at < now)
    else:
        live = aliased(RefreshToken)
        stmt = select(RefreshToken.id).where(
            RefreshToken.expires_at < now,
            ~exists().where(live.family_id == RefreshToken.family_id, live.expires_at >= now),
        )
    return stmt.limit(limit).with_for_update(skip_locked=True)


KEYS = {
    "oauth2_authorization_codes": AuthorizationCode.id,
    "oauth2_access_tokens": AccessToken.jti,
    "oauth2_refresh_tokens": RefreshToken.id,
}


def delete_expired_batch(session: Session, table: str, now: datetime, limit: int) -> int:
    """Delete one batch of expired rows of `table` and audit it. Returns rows deleted."""
    key = KEYS[table]
    ids = _expired_keys(table, now, limit).scalar_subquery()
    deleted = session.execute(
        delete(key.class_).where(key.in_(ids)).execution_options(synchronize_session=False)
    ).rowcount
    if deleted:
        record(
            session,
            AuditEvent(
                "expired",
                details={"table": table, "deleted": deleted, "expired_before": now.isoformat()},
            ),
        )
    return deleted


def purge_audit_batch(session: Session, cutoff: datetime, limit: int) -> int:
    """SQLite retention: delete the oldest sealed rows (and unsealed rows inside the
    sealed range) created before `cutoff`, and move the chain's anchor to the last
    deleted sealed row. Returns rows deleted."""
    state = lock_chain(session)
    if state is None or state.head_position is None:
        return 0
    rows = session.execute(
        select(TokenLog.id, TokenLog.created_at, TokenLog.seal_seq, TokenLog.row_hash)
        .where(
            TokenLog.created_at < cutoff,
            tuple_(TokenLog.created_at, TokenLog.id) <= tuple_(*state.head_position),
        )
        .order_by(TokenLog.created_at, TokenLog.id)
        .limit(limit)
    ).all()
    if not rows:
        return 0
    session.execute(
        delete(TokenLog)
        .where(TokenLog.id.in_([row.id for row in rows]))
        .execution_options(synchronize_session=False)
    )
    sealed = [row for row in rows if row.seal_seq is not None]
    if sealed:
        move_anchor(session, state, sealed[-1])
    record(
        session,
        AuditEvent(
            "audit_rows_removed",
            details={"rows": len(rows), "created_before": cutoff.isoformat()},
        ),
    )
    return len(rows)


async def _write(sessionmaker: async_sessionmaker[AsyncSession], call: Any, *args: Any) -> Any:
    async with sessionmaker() as session, session.begin():
        return await session.run_sync(call, *args)


async def _maintain_partitions(
    sessionmaker: async_sessionmaker[AsyncSession], now: datetime, report: JanitorReport
) -> None:
    current = audit_partitions.month_start(now)
    wanted = [audit_partitions.add_months(current, n) for n in range(MONTHS_AHEAD + 1)]

    def plan(session: Session) -> list[datetime]:
        return audit_partitions.months_in_default(session)

    for month in sorted(set(wanted) | set(await _write(sessionmaker, plan))):

        def create(session: Session, month: datetime = month) -> int | None:
            if not audit_partitions.try_lock(session):
                return None
            return audit_partitions.ensure_month(session, month)

        try:
            moved = await _write(sessionmaker, create)
        except DBAPIError as exc:  # lock timeout: the table is busy; next run
            report.skipped.append(f"partition {month:%Y-%m}: {type(exc.orig).__name__}")
            continue
        if moved is None:
            report.skipped.append("partitions: another janitor holds the lock")
            return
        if moved >= 0:
            report.partitions_created.append(audit_partitions.partition_name(month))


async def _drop_old_partitions(
    sessionmaker: async_sessionmaker[AsyncSession], cutoff: datetime, report: JanitorReport
) -> None:
    partitions = await _write(sessionmaker, audit_partitions.monthly_partitions)
    for partition in partitions:
        if partition.end > cutoff:
            return

        def drop(session: Session, partition: Any = partition) -> int | None | str:
            if not audit_partitions.try_lock(session):
                return "locked"
            rows = audit_partitions.drop_month(session, partition)
            if rows is not None:
                record(
                    session,
                    AuditEvent(
                        "audit_partition_dropped",
                        details={"partition": partition.name, "rows": rows},
                    ),
                )
            return rows

        try:
            rows = await _write(sessionmaker, drop)
        except DBAPIError as exc:
            report.skipped.append(f"drop {partition.name}: {type(exc.orig).__name__}")
            return
        if rows == "locked" or rows is None:
            report.skipped.append(f"drop {partition.name}: not sealed yet or locked")
            return
        report.partitions_dropped.append(partition.name)
        report.audit_rows_removed += int(rows)


async def run_janitor(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    now: datetime | None = None,
    seal: bool = True,
    batch_size: int | None = None,
) -> JanitorReport:
    """One janitor run (module docstring). `now` is the reference time for expiry and
    retention (UTC, default the current time)."""
    now = now or datetime.now(UTC)
    batch = batch_size or settings.janitor_batch_size
    report = JanitorReport()
    postgres = not settings.is_sqlite
    if postgres:
        await _maintain_partitions(sessionmaker, now, report)
    if seal:
        report.sealed = await seal_pending(sessionmaker, settings.audit_seal_delay, batch, now)
    cutoff = now - timedelta(days=settings.audit_retention_days)
    if postgres:
        await _drop_old_partitions(sessionmaker, cutoff, report)
    else:
        while (removed := await _write(sessionmaker, purge_audit_batch, cutoff, batch)) > 0:
            report.audit_rows_removed += removed
    for table in KEYS:
        total = 0
        while (count := await _write(sessionmaker, delete_expired_batch, table, now, batch)) > 0:
            total += count
        report.deleted[table] = total
    # Upstream connections started but never finished (issue 3's single-use `state` rows).
    report.deleted["oauth2_upstream_states"] = await _write(
        sessionmaker, delete_expired_states, now
    )
    ended = now - timedelta(seconds=settings.client_auth_failure_window)
    total = 0
    while (count := await _write(sessionmaker, delete_ended, ended, batch)) > 0:
        total += count
    report.deleted["oauth2_auth_failures"] = total
    return report
