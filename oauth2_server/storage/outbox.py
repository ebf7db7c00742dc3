"""The transactional outbox of webhook events (`oauth2_webhook_outbox`, issue #14 item 3).

Writers call `enqueue_event` inside the transaction of the change the event reports, so
the event exists if and only if the change committed (no event for a rolled-back change,
none lost for a committed one). The delivery loop (`notify.delivery`) reads the table:

- `claim_due`: the next deliverable events, at most one per subject (the earliest
  undelivered event of its subject, due, not leased), leased for `lease` seconds in one
  short transaction. On PostgreSQL the candidates are locked `FOR UPDATE SKIP LOCKED`, so
  loops in several instances claim disjoint rows without waiting on each other; SQLite
  serialises writers, and the lease keeps other processes off a claimed row.
- `mark_delivered` (after a 2xx answer only) and `mark_failed` (backoff) end a lease;
  `release` ends it without an outcome (a loop stopping mid-cycle).
- `pending_count`, `purge_delivered`: the metrics gauge and retention.

An event whose lease ran out without an outcome (its sender died) is claimed again:
delivery is at least once, and receivers deduplicate by `event_id` (`webhook-id`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, insert, select, update
from sqlalchemy.orm import Session, aliased

from oauth2_server.db.models import WebhookOutbox

# Event types a receiver may get (README "Webhooks"); enqueue_event refuses others.
EVENT_TYPES = frozenset(
    {
        "token.reuse_detected",
        "client.deactivated",
        "branch.needs_consent",
        "upstream.refresh_failing",
        "upstream.recovered",
    }
)
MAX_SUBJECT = 200  # characters: the column's bound
MAX_DATA_BYTES = 4096  # an event's `data` as compact JSON, UTF-8
MAX_ERROR = 200  # characters of `last_error`


def _utcnow() -> datetime:
    return datetime.now(UTC)


def new_event_id() -> str:
    """A fresh `webhook-id`: `msg_` and 32 hex digits (a random UUID)."""
    return f"msg_{uuid.uuid4().hex}"


def enqueue_event(session: Session, event_type: str, subject: str, data: dict[str, Any]) -> str:
    """Insert one event into the outbox in `session`'s transaction; return its id.

    `event_type`: one of EVENT_TYPES. `subject`: the ordering key (events of one subject
    are delivered in the order they were enqueued), e.g. `client:<client_id>`,
    `branch:<branch_id>`, `family:<family_id>`; 1 to MAX_SUBJECT characters. `data`: the
    event's JSON object (no secret, no token), at most MAX_DATA_BYTES as JSON. The stored
    payload is the Standard Webhooks body `{"type", "timestamp" (UTC, ISO 8601), "data"}`.

    Nothing is sent here: the row commits or rolls back with the caller's change. From an
    AsyncSession: `await session.run_sync(enqueue_event, event_type, subject, data)`.
    Raises ValueError for an unknown type, a bad subject or data too large or not JSON.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type[:60]!r}")
    if not subject or len(subject) > MAX_SUBJECT:
        raise ValueError(f"webhook subject must be 1-{MAX_SUBJECT} characters")
    try:
        encoded = json.dumps(data, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError("webhook data must be a JSON object") from exc
    if not isinstance(data, dict) or len(encoded.encode()) > MAX_DATA_BYTES:
        raise ValueError(f"webhook data must be a JSON object of at most {MAX_DATA_BYTES} bytes")
    now = _utcnow()
    event_id = new_event_id()
    payload = {
        "type": event_type,
        "timestamp": now.isoformat().replace("+00:00", "Z"),
        "data": json.loads(encoded),
    }
    session.execute(
        insert(WebhookOutbox).values(
            event_id=event_id,
            event_type=event_type,
            subject=subject,
            payload=payload,
            created_at=now,
            attempts=0,
            next_attempt_at=now,
        )
    )
    return event_id


@dataclass(frozen=True)
class ClaimedEvent:
    """An event leased to one delivery loop: `seq`, `event_id`, `event_type`, `subject`,
    `payload` (the body to send), `attempts` before this one."""

    seq: int
    event_id: str
    event_type: str
    subject: str
    payload: dict[str, Any]
    attempts: int


def _due_heads(now: datetime, limit: int) -> Any:
    """The seqs of due, unleased events that are the earliest undelivered of their subject."""
    earlier = aliased(WebhookOutbox)
    blocked = exists().where(
        and_(
            earlier.subject == WebhookOutbox.subject,
            earlier.delivered_at.is_(None),
            earlier.seq < WebhookOutbox.seq,
        )
    )
    return (
        select(WebhookOutbox.seq)
        .where(
            WebhookOutbox.delivered_at.is_(None),
            WebhookOutbox.next_attempt_at <= now,
            (WebhookOutbox.lease_until.is_(None)) | (WebhookOutbox.lease_until < now),
            ~blocked,
        )
        .order_by(WebhookOutbox.next_attempt_at, WebhookOutbox.seq)
        .limit(limit)
    )


def claim_due(session: Session, limit: int, lease: float) -> list[ClaimedEvent]:
    """Lease up to `limit` deliverable events for `lease` seconds and return them, in
    `seq` order; the caller commits at once (a short transaction).

    Deliverable: undelivered, `next_attempt_at` passed, no live lease, and no earlier
    undelivered event of the same subject (so a failing event blocks its subject's later
    ones, and two loops never send two events of one subject at once). One statement,
    `UPDATE … WHERE seq IN (candidates) RETURNING`: on PostgreSQL the candidates are
    locked `FOR UPDATE SKIP LOCKED` (concurrent claimers take disjoint rows without
    waiting); on SQLite the statement takes the write lock before it reads, so claimers
    in several processes take turns.
    """
    now = _utcnow()
    heads = _due_heads(now, limit)
    if session.get_bind().dialect.name == "postgresql":
        heads = heads.with_for_update(skip_locked=True)
    rows = session.execute(
        update(WebhookOutbox)
        .where(
            WebhookOutbox.seq.in_(heads.scalar_subquery()),
            WebhookOutbox.delivered_at.is_(None),
            (WebhookOutbox.lease_until.is_(None)) | (WebhookOutbox.lease_until < now),
        )
        .values(lease_until=now + timedelta(seconds=lease))
        .returning(
            WebhookOutbox.seq,
            WebhookOutbox.event_id,
            WebhookOutbox.event_type,
            WebhookOutbox.subject,
            WebhookOutbox.payload,
            WebhookOutbox.attempts,
        )
        .execution_options(synchronize_session=False)
    ).all()
    return sorted((ClaimedEvent(*row) for row in rows), key=lambda e: e.seq)


def mark_delivered(session: Session, seq: int) -> None:
    """Record a 2xx answer for event `seq`: delivered now (UTC), one more attempt, lease
    ended. Call only after the receiver's 2xx status was read."""
    now = _utcnow()
    session.execute(
        update(WebhookOutbox)
        .where(WebhookOutbox.seq == seq)
        .values(
            delivered_at=now,
            attempts=WebhookOutbox.attempts + 1,
            lease_until=None,
            last_error=None,
        )
        .execution_options(synchronize_session=False)
    )


def mark_failed(session: Session, seq: int, error: str, retry_in: float) -> None:
    """Record a failed attempt of event `seq`: one more attempt, `error` (a status or an
    error class, cut to MAX_ERROR characters; never a body), next attempt `retry_in`
    seconds from now, lease ended."""
    now = _utcnow()
    session.execute(
        update(WebhookOutbox)
        .where(WebhookOutbox.seq == seq, WebhookOutbox.delivered_at.is_(None))
        .values(
            attempts=WebhookOutbox.attempts + 1,
            last_error=error[:MAX_ERROR],
            next_attempt_at=now + timedelta(seconds=retry_in),
            lease_until=None,
        )
        .execution_options(synchronize_session=False)
    )


def release(session: Session, seqs: list[int]) -> None:
    """End the leases of undelivered events `seqs` without recording an attempt: a loop
    that stops between claim and outcome (graceful shutdown) hands them back at once
    instead of holding them for the lease's length."""
    if not seqs:
        return
    session.execute(
        update(WebhookOutbox)
        .where(WebhookOutbox.seq.in_(seqs), WebhookOutbox.delivered_at.is_(None))
        .values(lease_until=None)
        .execution_options(synchronize_session=False)
    )


def pending_count(session: Session) -> int:
    """Undelivered events (the partial index on pending rows answers it)."""
    query = select(func.count()).select_from(WebhookOutbox)
    return int(session.scalar(query.where(WebhookOutbox.delivered_at.is_(None))) or 0)


def purge_delivered(session: Session, before: datetime, limit: int) -> int:
    """Delete at most `limit` events delivered before `before` (UTC); how many went."""
    victims = (
        select(WebhookOutbox.seq)
        .where(WebhookOutbox.delivered_at.is_not(None), WebhookOutbox.delivered_at < before)
        .limit(limit)
        .scalar_subquery()
    )
    result = session.execute(
        delete(WebhookOutbox)
        .where(WebhookOutbox.seq.in_(victims))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)
