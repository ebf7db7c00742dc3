"""Tamper evidence for `oauth2_token_logs`: rows sealed into a SHA-256 hash chain.

Sealing happens outside requests (`audit.sealing`: the janitor, `oauth2-server audit
seal`), so issuing tokens never waits on the chain. Rows get consecutive `seal_seq`
numbers and

    row_hash = SHA-256(prev_hash ‖ "\\n" ‖ canonical JSON of the row's content and seq)

where `prev_hash` is the previous sealed row's `row_hash` (64 zeros at the start) and the
canonical JSON is RFC 8785 (`audit.canonical`, which also keeps verifying rows sealed in
the format before it). The chain order is `seal_seq` order (index
`ix_oauth2_token_logs_seal_seq`), which is `created_at` order for rows sealed by this
release (`audit.sealing` seals behind a horizon no row can still commit before).

`ChainWalker` walks sealed rows in that order from the anchor and reports the first
problem: a row whose content no longer matches its hash, or whose `prev_hash` does not
link (altered); a gap in `seal_seq` (deleted); a duplicated `seal_seq` or a seq at or
before the anchor (inserted); a row that differs from a signed checkpoint
(`audit.checkpoints`). `audit.verify` adds the checks against signed checkpoints and
retention records, and stragglers.

Retention removes the oldest rows (a prefix of the chain; `audit.retention` signs a
record of each removal); the last removed row becomes the chain's anchor (`anchor_seq`,
`anchor_hash`), where verification starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from oauth2_server.audit.canonical import FORMAT_LEGACY, FORMAT_RFC8785, matching_format
from oauth2_server.audit.canonical import link_hash as link_hash  # re-exported
from oauth2_server.audit.rows import CHAIN_FIELDS, columns
from oauth2_server.db.models import AuditChain, TokenLog

GENESIS_HASH = "0" * 64
ROW_COLUMNS = columns(CHAIN_FIELDS)

Position = tuple[datetime, int]


@dataclass(frozen=True)
class ChainState:
    """The chain row: head (last sealed row), anchor (last row removed by retention),
    `sealed_through` (every row created at or before it is sealed; None before the first
    complete seal pass) and the baseline where signed retention records start."""

    head_seq: int
    head_hash: str
    head_position: Position | None
    anchor_seq: int
    anchor_hash: str
    anchor_position: Position | None
    sealed_through: datetime | None = None
    baseline_seq: int = 0
    baseline_hash: str = GENESIS_HASH


def _state(row: AuditChain) -> ChainState:
    head = (row.head_created_at, row.head_log_id) if row.head_log_id is not None else None
    anchor = (row.anchor_created_at, row.anchor_log_id) if row.anchor_log_id is not None else None
    return ChainState(
        row.head_seq,
        row.head_hash,
        head,  # type: ignore[arg-type]
        row.anchor_seq,
        row.anchor_hash,
        anchor,  # type: ignore[arg-type]
        row.sealed_through,
        row.baseline_seq,
        row.baseline_hash,
    )


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


@dataclass(frozen=True)
class Problem:
    """The first break in the chain: `kind` is `altered`, `deleted`, `inserted`,
    `unsealed` (stragglers: `oauth2-server audit repair`) or `forged` (a checkpoint or
    retention record that does not verify, or a moved anchor no record covers)."""

    kind: str
    log_id: int | None
    seal_seq: int | None
    message: str


@dataclass
class VerifyReport:
    """Outcome of a verification. `checked`: sealed rows verified; `pending`: rows sealed
    after verification started or not sealed yet; `checkpoints`/`retention_records`:
    signed statements verified; `checkpoint_seq`: the newest checkpoint verified."""

    head_seq: int
    head_hash: str
    anchor_seq: int
    checked: int = 0
    pending: int = 0
    problem: Problem | None = None
    notes: list[str] = field(default_factory=list)
    formats: dict[int, int] = field(default_factory=dict)  # rows checked per chain format
    checkpoints: int = 0
    retention_records: int = 0
    checkpoint_seq: int | None = None
    stragglers: int = 0

    @property
    def ok(self) -> bool:
        return self.problem is None

    def fail(
        self, kind: str, message: str, seq: int | None = None, log_id: int | None = None
    ) -> None:
        """Record `message` as the problem unless one was found already."""
        if self.problem is None:
            self.problem = Problem(kind, log_id, seq, message)


class ChainWalker:
    """Checks sealed rows fed in `seal_seq` order against a `ChainState`, an optional
    head recorded elsewhere (`expect`: seq, hash) and signed checkpoints (seq → hash)."""

    def __init__(
        self,
        state: ChainState,
        expect: tuple[int, str] | None = None,
        checkpoints: dict[int, str] | None = None,
    ) -> None:
        self.state = state
        self.expected_seq = state.anchor_seq + 1
        self.prev_hash = state.anchor_hash
        self.expect = expect
        self.checkpoints = checkpoints or {}
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
            where = f"row id {row.id} ({row.action} at {row.created_at.isoformat()})"
            if row.seal_seq is not None and row.seal_seq <= state.anchor_seq:
                return self._fail(
                    "inserted",
                    f"{where} has seal_seq {row.seal_seq}, at or before the chain's anchor "
                    f"{state.anchor_seq} (removed by retention): an inserted or restored row",
                    row,
                )
            if row.seal_seq is None or row.seal_seq > state.head_seq:
                # sealed after the head read at the start: a forged seal here is caught
                # once the chain grows past it (duplicate seal_seq)
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
        """(kind, message) when a row breaks the `seal_seq` run."""
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
        format (`audit.canonical`), or differs from a signed checkpoint or `expect`."""
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
        signed = self.checkpoints.get(row.seal_seq)
        if signed is not None and row.row_hash != signed:
            return "altered", (
                f"{where} differs from the signed checkpoint at seal_seq {row.seal_seq}: "
                "the chain was rewritten (a row altered and every later hash recomputed)"
            )
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
        if report.problem is not None:
            return report
        last = self.expected_seq - 1
        if last < self.state.head_seq:
            report.fail(
                "deleted",
                f"sealed rows with seal_seq {last + 1}–{self.state.head_seq} are missing "
                "at the end of the chain",
                last + 1,
            )
        elif self.prev_hash != self.state.head_hash:
            report.fail(
                "altered", "the last sealed row does not match the recorded head hash", last
            )
        elif self.expect is not None and self.expect[0] <= self.state.anchor_seq:
            report.notes.append(
                f"checkpoint seal_seq {self.expect[0]} was removed by retention; not checked"
            )
        elif self.expect is not None and self.expect[0] > last:
            report.fail(
                "deleted",
                f"checkpoint seal_seq {self.expect[0]} is beyond the head",
                self.expect[0],
            )
        return report


def sealed_after(session: Session, after: int, limit: int) -> list[Any]:
    """The next sealed rows with `seal_seq` > `after`, in `seal_seq` order: `limit` of
    them, plus every other row sharing the last one's seq (a duplicate is never split
    across calls; resume with the last row's seq)."""
    rows = session.execute(
        select(*ROW_COLUMNS)
        .where(TokenLog.seal_seq > after)
        .order_by(TokenLog.seal_seq)
        .limit(limit)
    ).all()
    if len(rows) < limit:
        return sorted(rows, key=lambda r: (r.seal_seq, r.created_at, r.id))
    last = rows[-1].seal_seq
    same = session.execute(
        select(*ROW_COLUMNS)
        .where(TokenLog.seal_seq == last)
        .order_by(TokenLog.created_at, TokenLog.id)
    ).all()
    head = sorted(
        (r for r in rows if r.seal_seq < last), key=lambda r: (r.seal_seq, r.created_at, r.id)
    )
    return [*head, *same]


async def walk_chain(
    sessionmaker: async_sessionmaker[AsyncSession], walker: ChainWalker, batch_size: int = 2000
) -> VerifyReport:
    """Feed every sealed row to `walker` in batches (memory bounded by `batch_size`), from
    the start (rows at or before the anchor are reported as inserted)."""
    after = 0
    while True:
        async with sessionmaker() as session:
            rows = await session.run_sync(sealed_after, after, batch_size)
        if not walker.feed(rows) or not rows:
            break
        after = rows[-1].seal_seq
    return walker.finish()


async def verify_chain(
    sessionmaker: async_sessionmaker[AsyncSession],
    expect: tuple[int, str] | None = None,
    batch_size: int = 2000,
) -> VerifyReport:
    """`audit.verify.verify_audit_trail` without an outside JWKS: the chain, its signed
    checkpoints and retention records, and stragglers."""
    from oauth2_server.audit import verify  # verify imports this module

    return await verify.verify_audit_trail(sessionmaker, expect, batch_size=batch_size)
