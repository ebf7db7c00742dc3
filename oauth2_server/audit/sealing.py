"""Sealing audit rows into the hash chain, never past a row that can still commit
(issue #11 item 5).

The chain order is `seal_seq` order: a sealer takes the chain row (`chain.lock_chain`),
picks the unsealed rows created after `sealed_through` and at or before the *horizon*,
in (`created_at`, `id`) order, gives them the next `seal_seq` numbers from the head and

    row_hash = SHA-256(prev_hash ‖ "\\n" ‖ canonical JSON of the row's content and seq)

(`audit.canonical`), then signs a checkpoint of the new head (`audit.checkpoints`) in
the same transaction. Once a pass found fewer rows than a batch, `sealed_through`
becomes the horizon: every row created at or before it is sealed.

The horizon is a time before which no row can still commit:

    horizon = min(now − max(delay, margin), oldest other open transaction's start − margin)

with `now` and transaction starts read from the database's clock (PostgreSQL:
`clock_timestamp()` and `pg_stat_activity.xact_start` of this database's client
backends; SQLite: one writer at a time, the sealer holds the write lock, so only the
first term). The writers guarantee the other half (`audit.log.fresh_row`): a row's
`created_at` is never more than `log.RESTAMP_AFTER` seconds older than its insert — a
row buffered longer (a flush delayed by an outage) is stamped with the time of its
write and keeps its event time in `details.occurred_at`. So a row that commits after a
seal run has `created_at` > that run's horizon and is sealed by a later run, with a
later `seal_seq`: `seal_seq` is final once given, and rows with `seal_seq` > N are
exactly the rows sealed after N (the watermark of `audit tail`). `margin`
(`OAUTH2_AUDIT_SEAL_MARGIN`) absorbs clock skew between application servers and the
database, and on SQLite a writer's wait for the write lock.

A row created at or before `sealed_through` but unsealed is a *straggler*: left by a
release before this one (which sealed past rows still committing), or inserted later by
hand. Sealing never takes it silently; `audit verify` reports it and `audit repair`
(`repair_stragglers`) seals it at the head, audited.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from oauth2_server.audit.canonical import link_hash
from oauth2_server.audit.chain import ROW_COLUMNS, ChainState, lock_chain
from oauth2_server.audit.checkpoints import Checkpoint, write_checkpoint
from oauth2_server.audit.signing import SigningKey
from oauth2_server.db.models import AuditChain, TokenLog

DEFAULT_MARGIN = 15.0  # seconds; OAUTH2_AUDIT_SEAL_MARGIN's default

_OLDEST_TRANSACTION = text(
    "SELECT clock_timestamp(), (SELECT min(xact_start) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
    "AND backend_type = 'client backend' AND xact_start IS NOT NULL)"
)


def horizon(session: Session, delay: float, margin: float) -> datetime:
    """The newest `created_at` (UTC) that can be sealed now: no row at or before it can
    still commit (module docstring). `delay` and `margin` in seconds."""
    wait = timedelta(seconds=max(delay, margin))
    if session.get_bind().dialect.name == "sqlite":
        return datetime.now(UTC) - wait
    now, oldest = session.execute(_OLDEST_TRANSACTION).one()
    limit = now.astimezone(UTC) - wait
    if oldest is not None:
        limit = min(limit, oldest.astimezone(UTC) - timedelta(seconds=margin))
    return limit


def seal_rows(
    session: Session, state: ChainState, rows: Sequence[Any], signer: SigningKey | None
) -> Checkpoint | None:
    """Give `rows` (`chain.ROW_COLUMNS`, in the order to seal) the next `seal_seq`
    numbers after the head and link them, move the head, and sign a checkpoint of it
    (None without `signer` or rows), all in the caller's transaction holding
    `lock_chain`."""
    if not rows:
        return None
    seq, prev = state.head_seq, state.head_hash
    params: list[dict[str, Any]] = []
    for row in rows:
        seq += 1
        digest = link_hash(prev, row, seq)
        params.append(
            {"b_id": row.id, "b_created": row.created_at, "b_seq": seq, "b_prev": prev}
            | {"b_hash": digest}
        )
        prev = digest
    table = TokenLog.__table__
    session.connection().execute(
        update(table)
        .where(
            table.c.id == bindparam("b_id"),
            table.c.created_at == bindparam("b_created"),
            table.c.seal_seq.is_(None),
        )
        .values(
            seal_seq=bindparam("b_seq"), prev_hash=bindparam("b_prev"), row_hash=bindparam("b_hash")
        ),
        params,
    )
    last = rows[-1]
    head = {"head_seq": seq, "head_hash": prev}
    session.execute(
        update(AuditChain)
        .where(AuditChain.id == 1)
        .values(
            **head,
            head_created_at=last.created_at,
            head_log_id=last.id,
            updated_at=datetime.now(UTC),
        )
    )
    if signer is None:
        return None
    return write_checkpoint(session, signer, seq, prev, state)


@dataclass
class SealBatch:
    """One seal transaction: rows sealed (-1: another sealer holds the chain) and the
    checkpoint signed for it."""

    sealed: int
    checkpoint: Checkpoint | None = None


def seal_batch(
    session: Session, delay: float, margin: float, batch_size: int, signer: SigningKey | None
) -> SealBatch:
    """Seal up to `batch_size` rows created after `sealed_through` and at or before the
    horizon (`horizon`), in the caller's transaction (commit it). When fewer rows were
    left, `sealed_through` becomes the horizon."""
    state = lock_chain(session)
    if state is None:
        return SealBatch(-1)
    limit = horizon(session, delay, margin)
    if state.sealed_through is not None and limit <= state.sealed_through:
        return SealBatch(0)
    conditions = [TokenLog.seal_seq.is_(None), TokenLog.created_at <= limit]
    if state.sealed_through is not None:
        conditions.append(TokenLog.created_at > state.sealed_through)
    rows = session.execute(
        select(*ROW_COLUMNS)
        .where(*conditions)
        .order_by(TokenLog.created_at, TokenLog.id)
        .limit(batch_size)
    ).all()
    checkpoint = seal_rows(session, state, rows, signer)
    if len(rows) < batch_size:
        session.execute(update(AuditChain).where(AuditChain.id == 1).values(sealed_through=limit))
    return SealBatch(len(rows), checkpoint)


@dataclass
class SealRun:
    """What `seal_pending` did: rows sealed and the checkpoints it signed (oldest first)."""

    sealed: int = 0
    checkpoints: list[Checkpoint] = field(default_factory=list)

    @property
    def checkpoint_seq(self) -> int | None:
        """The seq of the last checkpoint signed (None: none)."""
        return self.checkpoints[-1].seq if self.checkpoints else None


async def seal_pending(
    sessionmaker: async_sessionmaker[AsyncSession],
    delay: float,
    batch_size: int = 1000,
    *,
    margin: float = DEFAULT_MARGIN,
    signer: SigningKey | None = None,
    published: Callable[[Checkpoint], None] | None = None,
) -> SealRun:
    """Seal every row up to the horizon, one transaction (and checkpoint) per batch;
    `published(checkpoint)` is called after each commit (the sink). Returns the run
    (0 rows when another sealer is busy: it seals them)."""
    run = SealRun()
    while True:
        async with sessionmaker() as session, session.begin():
            batch = await session.run_sync(
                lambda s: seal_batch(s, delay, margin, batch_size, signer)
            )
        if batch.checkpoint is not None:
            run.checkpoints.append(batch.checkpoint)
            if published is not None:
                published(batch.checkpoint)
        if batch.sealed <= 0:
            return run
        run.sealed += batch.sealed
        if batch.sealed < batch_size:
            return run


def straggler_filter(state: ChainState) -> list[Any]:
    """Conditions selecting stragglers: unsealed rows created at or before
    `sealed_through` (none before the first complete seal pass)."""
    if state.sealed_through is None:
        return [TokenLog.id.is_(None)]
    return [TokenLog.seal_seq.is_(None), TokenLog.created_at <= state.sealed_through]


def stragglers(session: Session, state: ChainState, limit: int = 10) -> tuple[int, list[int]]:
    """(how many stragglers there are, the ids of the first `limit` in chain order)."""
    where = straggler_filter(state)
    count = int(session.scalar(select(func.count()).select_from(TokenLog).where(*where)) or 0)
    ids = session.scalars(
        select(TokenLog.id).where(*where).order_by(TokenLog.created_at, TokenLog.id).limit(limit)
    ).all()
    return count, list(ids)


@dataclass
class Repair:
    """What `repair_stragglers` did (or would do, `dry_run`): stragglers sealed, their
    ids (the first 100) and creation range, the seqs they got and the checkpoint seq."""

    rows: int = 0
    ids: list[int] = field(default_factory=list)
    created_from: datetime | None = None
    created_to: datetime | None = None
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoint_seq: int | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)

    def add(self, rows: Sequence[Any], first_seq: int) -> None:
        """Count one batch of stragglers, sealed from `first_seq` on."""
        if not rows:
            return
        self.rows += len(rows)
        self.ids += [row.id for row in rows][: max(0, 100 - len(self.ids))]
        created = [row.created_at for row in rows]
        self.created_from = min([*created, *([self.created_from] if self.created_from else [])])
        self.created_to = max([*created, *([self.created_to] if self.created_to else [])])
        self.first_seq = self.first_seq or first_seq
        self.last_seq = first_seq + len(rows) - 1

    def details(self) -> dict[str, Any]:
        """The `audit_repaired` row's details (and the command's answer)."""
        return {
            "rows": self.rows,
            "ids": self.ids,
            "created_from": self.created_from.isoformat() if self.created_from else None,
            "created_to": self.created_to.isoformat() if self.created_to else None,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "checkpoint_seq": self.checkpoint_seq,
        }


def repair_batch(
    session: Session, signer: SigningKey, batch_size: int, repair: Repair, dry_run: bool
) -> int:
    """Seal up to `batch_size` stragglers at the head of the chain (in `created_at`, `id`
    order) with a checkpoint, in the caller's transaction; `dry_run` only counts them
    (one batch, nothing changes). Returns rows sealed (-1: another sealer holds the
    chain, try again)."""
    state = lock_chain(session)
    if state is None:
        return -1
    rows = session.execute(
        select(*ROW_COLUMNS)
        .where(*straggler_filter(state))
        .order_by(TokenLog.created_at, TokenLog.id)
        .limit(batch_size)
    ).all()
    if dry_run:
        count, _ = stragglers(session, state, 0)
        repair.add(rows, state.head_seq + 1)
        repair.rows = count
        return 0
    checkpoint = seal_rows(session, state, rows, signer)
    if rows:
        repair.add(rows, state.head_seq + 1)
    if checkpoint is not None:
        repair.checkpoints.append(checkpoint)
        repair.checkpoint_seq = checkpoint.seq
    return len(rows)
