"""Writing `oauth2_token_logs`, the audit trail (DESIGN.md invariants 6 and 10).

- State changes (issue, refresh, revocation, detected attacks) call `record(session, …)`
  with the session of the change, so the row commits or rolls back with it.
- Read-only events (introspection, failed client authentication) go to an `AuditBuffer`
  that writes them in batches every `OAUTH2_AUDIT_FLUSH_INTERVAL` seconds or
  `OAUTH2_AUDIT_BATCH_SIZE` rows. A crash loses at most the rows of the last interval of
  that worker process (the buffer is also flushed on shutdown); the buffer holds at most
  `OAUTH2_AUDIT_BUFFER_MAX_ROWS` rows and drops the oldest past that, counting them.
- Every value is bounded in one place, `AuditEvent.row()` (the rules: `audit_bounds`),
  before it reaches either path: text is cut to its column's length (read from the table
  definition) with a marker and a digest, NUL characters and lone surrogates (which
  PostgreSQL refuses) are replaced, and `details` is bounded in depth, items, string length
  and total size.

Rows name tokens only by `jti` or a digest prefix, never the token. Risk scores and flags
come from `oauth2_server.audit.risk`; rows are sealed into a hash chain later, outside the
request, by `oauth2_server.audit.chain` (the janitor); queries live in
`oauth2_server.audit.query`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from oauth2_server import metrics
from oauth2_server.audit.bounds import COLUMN_LIMITS, bound_details, bound_flags, bound_text
from oauth2_server.audit.risk import row_score
from oauth2_server.db.models import TokenLog
from oauth2_server.storage import utcnow
from oauth2_server.storage.errors import describe, is_unavailable
from oauth2_server.storage.tokens import RevokedToken

log = logging.getLogger("oauth2_server.audit")

# The flag of a row the database refused even after bounding, written in minimal form.
MALFORMED = "malformed"


@dataclass(frozen=True)
class RequestContext:
    """Who asked: the client IP, user agent and request id of one HTTP request, and when it
    arrived (`received_at`, UTC; None outside HTTP). Arrival, not processing, decides
    whether a second use of a single-use credential was concurrent (`risk.second_use`):
    a request that waited for a busy database is still the loser of a race."""

    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    received_at: datetime | None = None


@dataclass
class AuditEvent:
    """One `oauth2_token_logs` row. `token_id` is a `jti` or a digest prefix, never a token."""

    action: str
    context: RequestContext = field(default_factory=RequestContext)
    client_id: str | None = None
    subject: str | None = None
    branch_id: str | None = None
    grant_type: str | None = None
    token_id: str | None = None
    flags: list[str] = field(default_factory=list)
    risk_score: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utcnow)

    def row(self) -> dict[str, Any]:
        """Column values for the insert, every one bounded (the one place that bounds
        audit rows, for `record()` and `AuditBuffer` alike): text columns by
        `bound_text` to their column's length, `details` by `bound_details`, `flags` by
        `bound_flags`; the risk score is clamped to 0.00–1.00 by `risk.row_score`."""
        return {
            "created_at": self.created_at,
            "action": stored_text("action", self.action),
            "client_id": stored_text("client_id", self.client_id),
            "subject": stored_text("subject", self.subject),
            "branch_id": stored_text("branch_id", self.branch_id),
            "grant_type": stored_text("grant_type", self.grant_type),
            "token_id": stored_text("token_id", self.token_id),
            "ip": stored_text("ip", self.context.ip),
            "user_agent": stored_text("user_agent", self.context.user_agent or None),
            "request_id": stored_text("request_id", self.context.request_id),
            "risk_score": row_score(self.action, self.risk_score, self.flags),
            "flags": bound_flags(self.flags),
            "details": bound_details(self.details),
            # the token family (grant), indexed so risk rules and audits can follow it
            "family_id": stored_text("family_id", _family(self.details)),
        }


def stored_text(column: str, value: Any) -> str | None:
    """`value` as it is stored in `oauth2_token_logs.<column>` (bounded by `bound_text`), so
    a live value can be compared with stored ones (e.g. an over-long IP with the family's
    recorded IPs); None stays None."""
    if value is None:
        return None
    return bound_text(value if isinstance(value, str) else str(value), COLUMN_LIMITS[column])


def _family(details: dict[str, Any]) -> str | None:
    family = details.get("family_id")
    return family if isinstance(family, str) else None


def revoked_token(
    token: RevokedToken, context: RequestContext, client_id: str | None, **details: Any
) -> AuditEvent:
    """The `token_revoked` row of one token a revocation changed (issue #11: "was token
    X revoked, and by whom" is answered by `token_id`, after the janitor deleted the
    token's own row): its kind, its client as `target_client_id`, its user as `subject`,
    its family, and `details` (the cause). `client_id` is who revoked it (an admin client,
    None from the CLI, or the client whose credential was replayed)."""
    return AuditEvent(
        "token_revoked",
        context,
        client_id=client_id,
        subject=token.subject,
        token_id=token.token_id,
        details={
            "kind": token.kind,
            "target_client_id": token.client_id,
            **({"family_id": token.family_id} if token.family_id else {}),
            **details,
        },
    )


# A row is never written with a `created_at` more than this many seconds before its
# insert (`fresh_row`): what lets the sealer's horizon (`audit.sealing`) trust that no
# row older than its margin can still commit.
RESTAMP_AFTER = 1.0


def fresh_row(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """`row` as it is inserted at `now` (UTC): unchanged unless its `created_at` is more
    than `RESTAMP_AFTER` seconds old (a row buffered through a slow flush or an outage),
    then stamped `now` with the event's own time kept in `details.occurred_at` (ISO 8601;
    the first time is kept when a row is restamped again). Issue #11 item 5."""
    created = row["created_at"]
    if (now - created).total_seconds() <= RESTAMP_AFTER:
        return row
    details = dict(row.get("details") or {})
    details.setdefault("occurred_at", created.isoformat())
    return {**row, "created_at": now, "details": details}


def record(session: Session, *events: AuditEvent) -> None:
    """Insert audit rows in the caller's transaction (commit or roll back with the change),
    each stamped fresh (`fresh_row`)."""
    if events:
        now = utcnow()
        rows = [fresh_row(event.row(), now) for event in events]
        session.connection().execute(_INSERT_LOG, rows[0] if len(rows) == 1 else rows)


# A constant Core statement on the Table (not the ORM entity): compiled once, no ORM
# bulk-insert machinery on the hot path.
_INSERT_LOG = TokenLog.__table__.insert()


# Beyond an outage (`storage.errors.is_unavailable`), SQLSTATE classes that say "not now"
# rather than "not these rows": transaction rollback (serialization, deadlock),
# insufficient resources, operator intervention (e.g. statement timeout), system error;
# and lock not available.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"40", "53", "57", "58"})
_TRANSIENT_SQLSTATES = frozenset({"55P03"})


def database_unavailable(exc: BaseException) -> bool:
    """True when `exc` says the database cannot take the write now — unreachable, timed
    out, shutting down, out of connections, locked (`storage.errors.is_unavailable`, plus
    the transient SQLSTATEs above) — so the rows are kept for the next flush. False when
    the database (or the driver, encoding them) refused these rows: the batch is then
    split (`AuditBuffer`)."""
    if is_unavailable(exc):
        return True
    current: BaseException | None = exc
    for _ in range(5):  # the exception, SQLAlchemy's `.orig`, the driver's cause
        if current is None:
            break
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and len(sqlstate) == 5:
            return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES or sqlstate in _TRANSIENT_SQLSTATES
        current = getattr(current, "orig", None) or current.__cause__
    return False


def _minimal(row: dict[str, Any]) -> dict[str, Any]:
    """The row a refused row is written as: its action, time and risk score (values this
    server made, not input; at least 0.01, as on every flagged row, so `flag=malformed`
    queries find it) and the flag `malformed`; nothing a caller supplied."""
    return {
        "created_at": row["created_at"],
        "action": row["action"],
        "risk_score": row_score(row["action"], float(row["risk_score"]), [MALFORMED]),
        "flags": [MALFORMED],
        "details": {},
    }


class AuditBuffer:
    """Batches read-only audit rows; `start()` runs the flusher, `stop()` drains it.

    `writer(rows)` writes one batch of `oauth2_token_logs` rows in one transaction (the
    server passes `FastStore.copy_rows`: COPY on PostgreSQL). `interval` (seconds) and
    `batch_size` (rows) bound what a crash can lose (DESIGN.md invariant 6); `max_rows`
    bounds memory (invariant 10).

    A failed write is one of two things (`database_unavailable`):
    - the database is unreachable: the rows stay queued, in order, for the next flush; one
      log line when writes start failing, one when they succeed again;
    - the database refused some rows: the batch is split in halves until the refused rows
      are alone, and each is written in minimal form (`_minimal`, flag `malformed`; counted
      in `malformed`). A row refused even so is dropped, counted and logged. No row is
      retried forever and none is dropped silently.
    Past `max_rows` queued rows the oldest are dropped and counted in `dropped`: one log
    line when a drop episode starts and one, with its count, when a flush has brought the
    queue down to half the bound.
    """

    def __init__(
        self,
        writer: Callable[[list[dict[str, Any]]], Awaitable[None]],
        interval: float,
        batch_size: int,
        max_rows: int = 100_000,
    ) -> None:
        self._writer = writer
        self._interval = interval
        self._batch_size = batch_size
        self._max_rows = max_rows
        self._rows: deque[dict[str, Any]] = deque()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.dropped = 0  # rows never written: buffer full, or refused even in minimal form
        self.malformed = 0  # rows written in minimal form
        self._episode_dropped = 0  # rows dropped in the current drop episode
        self._outage: str | None = None  # the error type while the database is unreachable

    @property
    def depth(self) -> int:
        """Rows queued now."""
        return len(self._rows)

    def figures(self) -> dict[str, int]:
        """This worker's buffer figures for /readyz and /metrics: rows queued now
        (`buffered_rows`), dropped (`dropped_rows`) and written in minimal form
        (`malformed_rows`) since start."""
        return {
            "buffered_rows": len(self._rows),
            "dropped_rows": self.dropped,
            "malformed_rows": self.malformed,
        }

    def add(self, event: AuditEvent) -> None:
        """Queue a row (bounded by `AuditEvent.row()`); drops the oldest past `max_rows`;
        wakes the flusher early when a batch is full."""
        self._rows.append(event.row())
        self._trim()
        if len(self._rows) >= self._batch_size:
            self._wake.set()

    def _trim(self) -> None:
        excess = len(self._rows) - self._max_rows
        if excess <= 0:
            return
        for _ in range(excess):
            self._rows.popleft()
        self.dropped += excess
        metrics.AUDIT_ROWS_DROPPED.inc(excess)
        if not self._episode_dropped:
            log.error(
                "audit buffer full (OAUTH2_AUDIT_BUFFER_MAX_ROWS=%d): dropping its oldest "
                "rows until writes catch up (counted in /readyz and /metrics)",
                self._max_rows,
            )
        self._episode_dropped += excess

    async def flush(self) -> int:
        """Write the rows queued now, `batch_size` at a time. Returns how many rows
        reached the table (minimal forms included); stops early, keeping the rest queued,
        while the database is unreachable."""
        async with self._lock:
            remaining = len(self._rows)
            written = 0
            while remaining > 0:
                size = min(self._batch_size, remaining, len(self._rows))
                if size == 0:
                    break
                now = utcnow()  # rows held past RESTAMP_AFTER are stamped at their write
                batch = [fresh_row(self._rows.popleft(), now) for _ in range(size)]
                remaining -= size
                done, kept = await self._write(batch)
                written += done
                if kept:
                    self._rows.extendleft(reversed(kept))  # back in front, in order
                    self._trim()
                    return written
            if self._episode_dropped and len(self._rows) <= self._max_rows // 2:
                log.error(
                    "audit buffer: %d oldest rows were dropped while it was full",
                    self._episode_dropped,
                )
                self._episode_dropped = 0
            return written

    async def _write(self, rows: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
        """Write `rows`, splitting refused batches. Returns (rows written, rows to keep
        queued because the database became unreachable)."""
        written = 0
        refused: list[str] = []  # error type of each row written in minimal form
        lost: list[str] = []  # error type of each row refused even in minimal form
        pending = [rows]  # a stack of chunks; the last one is the next in order
        kept: list[dict[str, Any]] = []
        while pending:
            chunk = pending.pop()
            try:
                await self._writer(chunk)
            except Exception as exc:  # classified here; nothing escapes the flusher
                if database_unavailable(exc):
                    self._note_outage(exc)
                    kept = [row for part in [chunk, *reversed(pending)] for row in part]
                    break
                if len(chunk) > 1:
                    middle = len(chunk) // 2
                    pending += [chunk[middle:], chunk[:middle]]
                    continue
                try:
                    await self._writer([_minimal(chunk[0])])
                except Exception as again:  # classified like the first
                    if database_unavailable(again):
                        self._note_outage(again)
                        kept = [row for part in [chunk, *reversed(pending)] for row in part]
                        break
                    lost.append(type(again).__name__)
                else:
                    refused.append(type(exc).__name__)
                    written += 1
            else:
                written += len(chunk)
                self._note_success()
        self._note_refusals(refused, lost)
        return written, kept

    def _note_refusals(self, refused: list[str], lost: list[str]) -> None:
        """Count and log (one line each per batch, never the values) refused rows."""
        if refused:
            self.malformed += len(refused)
            metrics.AUDIT_ROWS_MALFORMED.inc(len(refused))
            log.warning(
                "%d audit rows were refused by the database (%s); written in minimal form "
                "with flag %r",
                len(refused),
                ", ".join(sorted(set(refused))),
                MALFORMED,
            )
        if lost:
            self.dropped += len(lost)
            metrics.AUDIT_ROWS_DROPPED.inc(len(lost))
            log.error(
                "%d audit rows were refused even in minimal form (%s); dropped",
                len(lost),
                ", ".join(sorted(set(lost))),
            )

    def _note_outage(self, exc: BaseException) -> None:
        if self._outage is None:
            self._outage = type(exc).__name__
            log.error(
                "writing audit rows failed: database unavailable (%s); keeping up to %d rows "
                "and retrying every flush",
                describe(exc),
                self._max_rows,
            )

    def _note_success(self) -> None:
        if self._outage is not None:
            log.warning("writing audit rows works again after %s", self._outage)
            self._outage = None

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # a bug must not end the flusher silently
                log.exception("the audit flusher failed; it keeps running")

    def start(self) -> None:
        """Run the flusher on the current event loop."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Let the flusher finish its write (never cancelled mid-batch), then flush the
        rest once."""
        self._stopping = True
        self._wake.set()
        if self._task:
            await self._task
        await self.flush()
