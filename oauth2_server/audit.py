"""Writing `oauth2_token_logs`, the audit trail (DESIGN.md invariant 6).

- State changes (issue, refresh, revocation, detected attacks) call `record(session, …)`
  with the session of the change, so the row commits or rolls back with it.
- Read-only events (introspection, failed client authentication) go to an `AuditBuffer`
  that writes them in batches every `OAUTH2_AUDIT_FLUSH_INTERVAL` seconds or
  `OAUTH2_AUDIT_BATCH_SIZE` rows. A crash loses at most the rows of the last interval of
  that worker process (the buffer is also flushed on shutdown).

Rows name tokens only by `jti` or a digest prefix, never the token. Risk scores and flags
come from `oauth2_server.risk`; rows are sealed into a hash chain later, outside the
request, by `oauth2_server.audit_chain` (the janitor); queries live in
`oauth2_server.audit_query`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from oauth2_server.db.models import TokenLog
from oauth2_server.risk import FIXED_SCORES, row_score
from oauth2_server.storage import utcnow

log = logging.getLogger(__name__)

# Risk scores of fixed events (0.00–1.00): the rules live in `oauth2_server.risk`.
RISK = FIXED_SCORES


@dataclass(frozen=True)
class RequestContext:
    """Who asked: the client IP, user agent and request id of one HTTP request."""

    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


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
    risk_score: float | None = None
    flags: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utcnow)

    def row(self) -> dict[str, Any]:
        """Column values for the insert."""
        return {
            "created_at": self.created_at,
            "action": self.action,
            "client_id": self.client_id,
            "subject": self.subject,
            "branch_id": self.branch_id,
            "grant_type": self.grant_type,
            "token_id": self.token_id,
            "ip": self.context.ip,
            "user_agent": (self.context.user_agent or "")[:400] or None,
            "request_id": self.context.request_id,
            "risk_score": row_score(self.action, self.risk_score, self.flags),
            "flags": self.flags,
            "details": self.details,
            # the token family (grant), indexed so risk rules and audits can follow it
            "family_id": _family(self.details),
        }


def _family(details: dict[str, Any]) -> str | None:
    family = details.get("family_id")
    return family if isinstance(family, str) else None


def record(session: Session, *events: AuditEvent) -> None:
    """Insert audit rows in the caller's transaction (commit or roll back with the change)."""
    if events:
        rows = [event.row() for event in events]
        session.connection().execute(_INSERT_LOG, rows[0] if len(rows) == 1 else rows)


# A constant Core statement on the Table (not the ORM entity): compiled once, no ORM
# bulk-insert machinery on the hot path.
_INSERT_LOG = TokenLog.__table__.insert()


class AuditBuffer:
    """Batches read-only audit rows; `start()` runs the flusher, `stop()` drains it.

    `writer(rows)` writes one batch of `oauth2_token_logs` rows in one transaction (the
    server passes `FastStore.copy_rows`: COPY on PostgreSQL). `interval` (seconds) and
    `batch_size` (rows) bound what a crash can lose (DESIGN.md invariant 6).
    """

    def __init__(
        self,
        writer: Callable[[list[dict[str, Any]]], Awaitable[None]],
        interval: float,
        batch_size: int,
    ) -> None:
        self._writer = writer
        self._interval = interval
        self._batch_size = batch_size
        self._rows: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, event: AuditEvent) -> None:
        """Queue a row; wakes the flusher early when a batch is full."""
        self._rows.append(event.row())
        if len(self._rows) >= self._batch_size:
            self._wake.set()

    async def flush(self) -> int:
        """Write every queued row now. Returns how many were written."""
        rows, self._rows = self._rows, []
        if not rows:
            return 0
        try:
            await self._writer(rows)
        except Exception:
            log.exception(
                "writing %d audit rows failed; they are kept for the next flush", len(rows)
            )
            self._rows[:0] = rows
            return 0
        return len(rows)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await self.flush()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
