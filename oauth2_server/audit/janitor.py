"""`oauth2-server janitor`: housekeeping safe to run from several machines at once.

One run, in this order:

1. PostgreSQL: create the audit partitions of this month and the next `MONTHS_AHEAD`
   and move rows out of the default partition (`audit_partitions`, advisory lock).
2. Seal audit rows into the hash chain up to the horizon (`audit.sealing`: older than
   `OAUTH2_AUDIT_SEAL_DELAY` and than any row that can still commit), each seal
   transaction with a signed checkpoint, copied to `OAUTH2_AUDIT_CHECKPOINT_SINK`.
3. Retention: audit rows older than `OAUTH2_AUDIT_RETENTION_DAYS` go, once sealed and
   only as a prefix of the chain: whole month partitions on PostgreSQL, batches of rows
   on SQLite; each removal writes a signed retention record (`audit.retention`) and moves
   the chain's anchor to its last row. Without a signing key retention is skipped.
4. Delete expired authorization codes (kept `CODE_REPLAY_WINDOW` seconds past expiry so
   a replay is still recognised), expired access-token rows, and refresh-token rows of
   families whose every token has expired.
5. Delete failure-limiter counters (`oauth2_auth_failures`) whose window has ended,
   pushed authorization requests never used (`oauth2_pushed_requests`) and DPoP proof ids
   past their window (`oauth2_used_jtis`), once expired.
6. PostgreSQL: `VACUUM (SKIP_LOCKED)` each token table this run deleted rows from, so the
   space of the deleted rows is reused by new tokens whatever autovacuum does (it may be
   off, or behind on a table whose rows all turn over within the token lifetime: the table
   then grows with run time, not with live tokens). A table another VACUUM holds is
   skipped. Plain VACUUM takes no lock that blocks reads or writes.

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

from sqlalchemy import Select, delete, exists, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, aliased

from oauth2_server.audit import partitions as audit_partitions
from oauth2_server.audit.chain import lock_chain
from oauth2_server.audit.checkpoints import Sink
from oauth2_server.audit.log import AuditEvent, record
from oauth2_server.audit.retention import Policy, Removal, record_removal
from oauth2_server.audit.sealing import seal_pending
from oauth2_server.audit.signing import SigningKey
from oauth2_server.config import Settings
from oauth2_server.db.models import (
    AccessToken,
    AuthorizationCode,
    RefreshToken,
    TokenLog,
)
from oauth2_server.storage.auth_failures import delete_ended
from oauth2_server.storage.pushed_requests import delete_expired_pushed_requests
from oauth2_server.storage.upstream_states import delete_expired_states
from oauth2_server.storage.used_jtis import delete_expired_jtis

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
    vacuumed: list[str] = field(default_factory=list)  # PostgreSQL: tables vacuumed (step 6)
    checkpoint_seq: int | None = None  # the last checkpoint this run signed
    retention_records: list[dict[str, Any]] = field(default_factory=list)  # sealed seq ranges

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


def purge_audit_batch(
    session: Session, cutoff: datetime, limit: int, policy: Policy
) -> dict[str, Any] | None:
    """SQLite retention: delete the oldest sealed rows, a prefix of the chain (seq
    anchor+1 on) created before `cutoff`, with a signed retention record moving the
    chain's anchor to the last of them. Returns the record (None: nothing to remove)."""
    state = lock_chain(session)
    if state is None:
        return None
    rows = session.execute(
        select(TokenLog.id, TokenLog.created_at, TokenLog.seal_seq, TokenLog.row_hash)
        .where(TokenLog.seal_seq > state.anchor_seq)
        .order_by(TokenLog.seal_seq)
        .limit(limit)
    ).all()
    prefix = []
    for expected, row in enumerate(rows, state.anchor_seq + 1):
        if row.seal_seq != expected or row.created_at >= cutoff:
            break
        prefix.append(row)
    if not prefix:
        return None
    created = [row.created_at for row in prefix]
    removal = Removal(
        prefix[0].seal_seq, prefix[-1].seal_seq, len(prefix), min(created), max(created), prefix[-1]
    )
    statement = record_removal(session, state, removal, policy)
    session.execute(
        delete(TokenLog)
        .where(TokenLog.id.in_([row.id for row in prefix]))
        .execution_options(synchronize_session=False)
    )
    record(
        session,
        AuditEvent(
            "audit_rows_removed",
            details={
                "rows": len(prefix),
                "created_before": cutoff.isoformat(),
                "first_seq": removal.first_seq,
                "last_seq": removal.last_seq,
            },
        ),
    )
    return statement


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
    sessionmaker: async_sessionmaker[AsyncSession],
    cutoff: datetime,
    report: JanitorReport,
    policy: Policy,
) -> None:
    """Drop month partitions past `cutoff`, oldest first; months whose rows are not the
    start of the chain alone go together with the next (`partitions.drop_months`)."""
    partitions = await _write(sessionmaker, audit_partitions.monthly_partitions)
    expired = [p for p in partitions if p.end <= cutoff]
    group: list[audit_partitions.Partition] = []
    for partition in expired:
        group.append(partition)
        names = [p.name for p in group]
        made: list[dict[str, Any]] = []
        try:
            rows = await _write(sessionmaker, _drop, list(group), policy, made)
        except DBAPIError as exc:
            report.skipped.append(f"drop {', '.join(names)}: {type(exc.orig).__name__}")
            return
        if rows == audit_partitions.NOT_A_PREFIX:
            continue  # a later month holds seqs in between: try both together
        if rows == "locked" or rows is None:
            report.skipped.append(f"drop {', '.join(names)}: not sealed yet or locked")
            return
        report.partitions_dropped += names
        report.audit_rows_removed += int(rows)
        report.retention_records += made
        group = []
    if group:
        report.skipped.append(f"drop {', '.join(p.name for p in group)}: not the chain's start")


def _drop(
    session: Session, months: list[Any], policy: Policy, made: list[dict[str, Any]]
) -> int | None | str:
    """Drop `months` together (`partitions.drop_months`) under the partition lock, audited."""
    if not audit_partitions.try_lock(session):
        return "locked"
    rows = audit_partitions.drop_months(session, months, policy, made)
    if rows is not None and rows >= 0:
        record(
            session,
            AuditEvent(
                "audit_partition_dropped",
                details={"partition": ", ".join(p.name for p in months), "rows": rows},
            ),
        )
    return rows


async def _seal(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    batch: int,
    signer: SigningKey | None,
    report: JanitorReport,
) -> None:
    sink = Sink(settings.audit_checkpoint_sink)
    run = await seal_pending(
        sessionmaker,
        settings.audit_seal_delay,
        batch,
        margin=settings.audit_seal_margin,
        signer=signer,
        published=lambda checkpoint: sink.push(checkpoint.as_dict()),
    )
    report.sealed = run.sealed
    report.checkpoint_seq = run.checkpoint_seq


async def _retention(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    cutoff: datetime,
    batch: int,
    policy: Policy,
    report: JanitorReport,
) -> None:
    sink = Sink(settings.audit_checkpoint_sink)
    if not settings.is_sqlite:
        await _drop_old_partitions(sessionmaker, cutoff, report, policy)
    else:
        while item := await _write(sessionmaker, purge_audit_batch, cutoff, batch, policy):
            report.audit_rows_removed += item["rows"]
            report.retention_records.append(item)
    for item in report.retention_records:
        sink.push(item)
    # the report names each record by its seq range; the JWS is in the table and the sink
    report.retention_records = [
        {key: item[key] for key in ("first_seq", "last_seq", "rows")}
        for item in report.retention_records
    ]


async def run_janitor(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    now: datetime | None = None,
    seal: bool = True,
    batch_size: int | None = None,
    signer: SigningKey | None = None,
    actor: str = "janitor",
) -> JanitorReport:
    """One janitor run (module docstring). `now` is the reference time for expiry and
    retention (UTC, default the current time; sealing reads the database's clock);
    `signer` signs checkpoints and retention records (without it neither is written and
    retention is skipped); `actor` names who ran it in retention records."""
    now = now or datetime.now(UTC)
    batch = batch_size or settings.janitor_batch_size
    report = JanitorReport()
    if not settings.is_sqlite:
        await _maintain_partitions(sessionmaker, now, report)
    if seal:
        await _seal(settings, sessionmaker, batch, signer, report)
    cutoff = now - timedelta(days=settings.audit_retention_days)
    if signer is None:
        report.skipped.append("retention: no signing key to sign its records")
    else:
        policy = Policy(settings.audit_retention_days, actor, signer)
        await _retention(settings, sessionmaker, cutoff, batch, policy, report)
    for table in KEYS:
        total = 0
        while (count := await _write(sessionmaker, delete_expired_batch, table, now, batch)) > 0:
            total += count
        report.deleted[table] = total
    # Upstream connections started but never finished (issue 3's single-use `state` rows).
    report.deleted["oauth2_upstream_states"] = await _write(
        sessionmaker, delete_expired_states, now
    )
    # Pushed authorization requests never used (RFC 9126) and DPoP proof ids past their
    # window (RFC 9449 §11.1): each already refused by its own expiry.
    report.deleted["oauth2_pushed_requests"] = await _write(
        sessionmaker, delete_expired_pushed_requests, now
    )
    report.deleted["oauth2_used_jtis"] = await _write(sessionmaker, delete_expired_jtis, now)
    ended = now - timedelta(seconds=settings.client_auth_failure_window)
    total = 0
    while (count := await _write(sessionmaker, delete_ended, ended, batch)) > 0:
        total += count
    report.deleted["oauth2_auth_failures"] = total
    if not settings.is_sqlite:
        await _vacuum(sessionmaker, [t for t in VACUUMED if report.deleted.get(t)], report)
    return report


# Tables whose rows turn over within a token's lifetime (step 6).
VACUUMED = (*KEYS, "oauth2_used_jtis", "oauth2_auth_failures")


async def _vacuum(
    sessionmaker: async_sessionmaker[AsyncSession], tables: list[str], report: JanitorReport
) -> None:
    """`VACUUM (SKIP_LOCKED)` each of `tables` (names from VACUUMED only), outside a
    transaction as VACUUM requires; a failure is logged and skipped, never raised."""
    engine = sessionmaker.kw["bind"]
    for table in tables:
        try:
            async with engine.connect() as connection:
                connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
                await connection.execute(text(f"VACUUM (SKIP_LOCKED) {table}"))
        except DBAPIError as exc:
            report.skipped.append(f"vacuum {table}: {type(exc.orig).__name__}")
            continue
        report.vacuumed.append(table)
