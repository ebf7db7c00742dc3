"""Tamper evidence for `oauth2_token_logs`: rows sealed into a SHA-256 hash chain.

Sealing happens outside requests (the janitor, `oauth2-server audit seal`), so issuing
tokens never waits on the chain. A sealer takes the chain row (`oauth2_audit_chain`,
locked: `FOR UPDATE SKIP LOCKED` on PostgreSQL, the write lock on SQLite), then gives
the next unsealed rows, in (`created_at`, `id`) order and older than the seal delay,
consecutive `seal_seq` numbers and

    row_hash = SHA-256(prev_hash ‖ "\\n" ‖ canonical JSON of the row's content and seq)

where `prev_hash` is the previous sealed row's `row_hash` (64 zeros at the start) and the
canonical JSON is RFC 8785 (`audit.canonical`, which also keeps verifying rows sealed in
the format before it).
The chain order is therefore the (`created_at`, `id`) order, which the keyset index
already serves.

`verify_chain` walks the table in that order from the start and reports the first
problem: a row whose content no longer matches its hash, or whose `prev_hash` does not
link (altered); a gap in `seal_seq` (deleted); a duplicated `seal_seq`, a sealed-looking
row after the head, or an unsealed row inside the sealed range (inserted).

Retention removes the oldest rows (a whole month partition on PostgreSQL); the last
removed row becomes the chain's anchor (`anchor_seq`, `anchor_hash`), where
verification starts. The chain is keyless: someone who can write the database and
recompute every later hash is caught only by comparing with a head recorded elsewhere
(`audit verify` prints it; `--expect SEQ:HASH` checks one).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from oauth2_server.audit.canonical import FORMAT_LEGACY, FORMAT_RFC8785, link_hash, matching_format
from oauth2_server.audit.rows import CHAIN_FIELDS, columns
from oauth2_server.db.models import AuditChain, TokenLog

GENESIS_HASH = "0" * 64
ROW_COLUMNS = columns(CHAIN_FIELDS)

Position = tuple[datetime, int]


@dataclass(frozen=True)
class ChainState:
    """The chain row: head (last sealed row) and anchor (last row removed by retention)."""

    head_seq: int
    head_hash: str
    head_position: Position | None
    anchor_seq: int
    anchor_hash: str
    anchor_position: Position | None


def _state(row: AuditChain) -> ChainState:
    head = (row.head_created_at, row.head_log_id) if row.head_log_id is not None else None
    anchor = (row.anchor_created_at, row.anchor_log_id) if row.anchor_log_id is not None else None
    return ChainState(row.head_seq, row.head_hash, head, row.anchor_seq, row.anchor_hash, anchor)  # type: ignore[arg-type]


def chain_state(session: Session) -> ChainState:
    """The chain's head and anchor (no lock)."""
    row = session.get(AuditChain, 1, populate_existing=True)
    if row is None:
        raise RuntimeError("oauth2_audit_chain has no row: run `oauth2-server migrate`")
    return _state(row)


def lock_chain(session: Session) -> ChainState | None:
    """Take the chain row for this transaction; None if another sealer holds it.

    PostgreSQL: `SELECT … FOR UPDATE SKIP LOCKED`. SQLite: an UPDATE as the first
    statement takes the database write lock (waiting up to the busy timeout), so the
    state read after it is the latest.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(
            update(AuditChain).where(AuditChain.id == 1).values(updated_at=datetime.now(UTC))
        )
        return chain_state(session)
    row = session.scalars(
        select(AuditChain)
        .where(AuditChain.id == 1)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).first()
    return _state(row) if row is not None else None


def move_anchor(session: Session, state: ChainState, last_removed: Any) -> None:
    """After retention removed sealed rows, make the last of them the chain's anchor
    (where verification starts), unless the anchor is already at or past it.

    `last_removed` has `seal_seq`, `row_hash`, `created_at` (UTC) and `id`; call it in the
    transaction that removed the rows, holding `lock_chain`.
    """
    if last_removed.seal_seq <= state.anchor_seq:
        return
    session.execute(
        update(AuditChain)
        .where(AuditChain.id == 1)
        .values(
            anchor_seq=last_removed.seal_seq,
            anchor_hash=last_removed.row_hash,
            anchor_created_at=last_removed.created_at,
            anchor_log_id=last_removed.id,
            updated_at=datetime.now(UTC),
        )
    )


def _after(position: Position | None) -> Any:
    if position is None:
        return True
    return tuple_(TokenLog.created_at, TokenLog.id) > tuple_(*position)


def seal_batch(session: Session, now: datetime, delay: float, batch_size: int) -> int:
    """Seal up to `batch_size` rows older than `delay` seconds, continuing the chain, in
    the caller's transaction (commit it). Returns rows sealed; -1 if another sealer
    holds the chain."""
    state = lock_chain(session)
    if state is None:
        return -1
    rows = session.execute(
        select(*ROW_COLUMNS)
        .where(
            _after(state.head_position),
            TokenLog.seal_seq.is_(None),
            TokenLog.created_at <= now - timedelta(seconds=delay),
        )
        .order_by(TokenLog.created_at, TokenLog.id)
        .limit(batch_size)
    ).all()
    if not rows:
        return 0
    seq, prev = state.head_seq, state.head_hash
    params: list[dict[str, Any]] = []
    for row in rows:
        seq += 1
        digest = link_hash(prev, row, seq)
        params.append(
            {
                "b_id": row.id,
                "b_created": row.created_at,
                "b_seq": seq,
                "b_prev": prev,
                "b_hash": digest,
            }
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
    session.execute(
        update(AuditChain)
        .where(AuditChain.id == 1)
        .values(
            head_seq=seq,
            head_hash=prev,
            head_created_at=last.created_at,
            head_log_id=last.id,
            updated_at=datetime.now(UTC),
        )
    )
    return len(rows)


async def seal_pending(
    sessionmaker: async_sessionmaker[AsyncSession],
    delay: float,
    batch_size: int = 1000,
    now: datetime | None = None,
) -> int:
    """Seal every row older than `delay` seconds, one transaction per batch.

    Returns rows sealed (0 when another sealer is busy: it seals them)."""
    now = now or datetime.now(UTC)
    total = 0
    while True:
        async with sessionmaker() as session, session.begin():
            count = await session.run_sync(lambda s: seal_batch(s, now, delay, batch_size))
        if count <= 0:
            return total
        total += count
        if count < batch_size:
            return total


@dataclass(frozen=True)
class Problem:
    """The first break in the chain: `kind` is `altered`, `deleted` or `inserted`."""

    kind: str
    log_id: int | None
    seal_seq: int | None
    message: str


@dataclass
class VerifyReport:
    """Outcome of `verify_chain`. `checked`: sealed rows verified; `pending`: rows newer
    than the head when verification started (not sealed yet, or sealed meanwhile)."""

    head_seq: int
    head_hash: str
    anchor_seq: int
    checked: int = 0
    pending: int = 0
    problem: Problem | None = None
    notes: list[str] = field(default_factory=list)
    formats: dict[int, int] = field(default_factory=dict)  # rows checked per chain format

    @property
    def ok(self) -> bool:
        return self.problem is None


class ChainWalker:
    """Checks rows fed in (`created_at`, `id`) order against a `ChainState`."""

    def __init__(self, state: ChainState, expect: tuple[int, str] | None = None) -> None:
        self.state = state
        self.expected_seq = state.anchor_seq + 1
        self.prev_hash = state.anchor_hash
        self.expect = expect
        self.report = VerifyReport(state.head_seq, state.head_hash, state.anchor_seq)
        self.last_format = FORMAT_RFC8785
        self.legacy_after_rfc8785 = 0

    def _count(self, chain_format: int) -> None:
        """Count a verified row's format; a legacy row after an RFC 8785 one was sealed by
        an older release (a rolling upgrade) or holds what RFC 8785 cannot express."""
        formats = self.report.formats
        formats[chain_format] = formats.get(chain_format, 0) + 1
        if chain_format == FORMAT_LEGACY and formats.get(FORMAT_RFC8785):
            self.legacy_after_rfc8785 += 1
        self.last_format = chain_format

    def _fail(self, kind: str, message: str, row: Any) -> bool:
        self.report.problem = Problem(
            kind, row.id if row else None, getattr(row, "seal_seq", None), message
        )
        return False

    def feed(self, rows: Iterable[Any]) -> bool:
        """Check the next rows; False once a problem is found (see `report.problem`)."""
        state = self.state
        for row in rows:
            position = (row.created_at, row.id)
            where = f"row id {row.id} ({row.action} at {row.created_at.isoformat()})"
            if state.anchor_position is not None and position <= state.anchor_position:
                return self._fail("inserted", f"{where} is dated before the chain's anchor", row)
            if state.head_position is None or position > state.head_position:
                # newer than the head read at the start (possibly sealed since): a forged
                # seal here is caught once the chain grows past it (duplicate seal_seq)
                self.report.pending += 1
                continue
            problem = self._sequence_problem(row, where) or self._hash_problem(row, where)
            if problem is not None:
                return self._fail(*problem, row=row)
            self.prev_hash = row.row_hash
            self.expected_seq += 1
            self.report.checked += 1
        return True

    def _sequence_problem(self, row: Any, where: str) -> tuple[str, str] | None:
        """(kind, message) when a row inside the sealed range breaks the `seal_seq` run."""
        if row.seal_seq is None:
            return "inserted", (
                f"{where} is not sealed but lies inside the sealed range: inserted "
                "after sealing (or written later than the seal delay)"
            )
        if row.seal_seq < self.expected_seq:
            return "inserted", (
                f"{where} repeats seal_seq {row.seal_seq} (expected {self.expected_seq}): "
                "an inserted or moved row"
            )
        if row.seal_seq > self.expected_seq:
            missing = f"{self.expected_seq}" + (
                f"–{row.seal_seq - 1}" if row.seal_seq - 1 > self.expected_seq else ""
            )
            return "deleted", f"sealed row(s) with seal_seq {missing} are missing before {where}"
        return None

    def _hash_problem(self, row: Any, where: str) -> tuple[str, str] | None:
        """(kind, message) when a row does not link, does not match its hash in any chain
        format (`audit.canonical`), or differs from the expected checkpoint."""
        if row.prev_hash != self.prev_hash:
            return "altered", (
                f"{where} does not link to the previous sealed row (its prev_hash differs): "
                "the previous row was altered and re-hashed, or this link was edited"
            )
        chain_format = matching_format(
            self.prev_hash, row, row.seal_seq, row.row_hash, self.last_format
        )
        if chain_format is None:
            return "altered", f"{where} was altered: its content no longer matches its hash"
        self._count(chain_format)
        expect = self.expect
        if expect is not None and row.seal_seq == expect[0] and row.row_hash != expect[1]:
            return "altered", f"checkpoint seal_seq {expect[0]} differs: the chain was rewritten"
        return None

    def finish(self) -> VerifyReport:
        """Final checks once every row was fed: the chain reaches the recorded head."""
        report = self.report
        if self.legacy_after_rfc8785:
            report.notes.append(
                f"{self.legacy_after_rfc8785} rows after the first RFC 8785 seal are sealed in "
                "chain format 1 (by an older release, or content RFC 8785 cannot express)"
            )
        if report.problem is None:
            last = self.expected_seq - 1
            if last < self.state.head_seq:
                report.problem = Problem(
                    "deleted",
                    None,
                    last + 1,
                    f"sealed rows with seal_seq {last + 1}–{self.state.head_seq} are missing "
                    "at the end of the chain",
                )
            elif self.prev_hash != self.state.head_hash:
                report.problem = Problem(
                    "altered",
                    None,
                    last,
                    "the last sealed row does not match the recorded head hash",
                )
            elif self.expect is not None and self.expect[0] <= self.state.anchor_seq:
                report.notes.append(
                    f"checkpoint seal_seq {self.expect[0]} was removed by retention; not checked"
                )
            elif self.expect is not None and self.expect[0] > last:
                report.problem = Problem(
                    "deleted",
                    None,
                    self.expect[0],
                    f"checkpoint seal_seq {self.expect[0]} is beyond the head",
                )
        return report


def rows_after(session: Session, position: Position | None, limit: int) -> Sequence[Any]:
    """The next `limit` rows after `position` in chain order (`created_at`, `id`)."""
    return session.execute(
        select(*ROW_COLUMNS)
        .where(_after(position))
        .order_by(TokenLog.created_at, TokenLog.id)
        .limit(limit)
    ).all()


async def verify_chain(
    sessionmaker: async_sessionmaker[AsyncSession],
    expect: tuple[int, str] | None = None,
    batch_size: int = 2000,
) -> VerifyReport:
    """Recompute the whole chain in batches (memory bounded by `batch_size`) and report
    the first altered, deleted or inserted row. `expect` = (seal_seq, row_hash) of a
    head recorded earlier, checked too."""
    async with sessionmaker() as session:
        state = await session.run_sync(chain_state)
    walker = ChainWalker(state, expect)
    position: Position | None = None
    while True:
        async with sessionmaker() as session:
            rows = await session.run_sync(rows_after, position, batch_size)
        if not walker.feed(rows) or len(rows) < batch_size:
            break
        position = (rows[-1].created_at, rows[-1].id)
    return walker.finish()
