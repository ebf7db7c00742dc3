"""Incremental pulls of the audit trail (issue #11 item 7): `GET /admin/audit?after=SEQ`,
`oauth2-server audit query --after SEQ` and `oauth2-server audit tail`.

The watermark is `seal_seq`, the row's position in the hash chain (`audit.chain`). A row
gets it once, when it is sealed, and keeps it; sealing runs one batch at a time under the
chain row's lock and numbers rows from the head on, so the sealed rows are always seq
anchor+1..head without a gap, whatever order they committed in. Hence "rows with
`seal_seq` > N, in `seal_seq` order" returns each row exactly once across calls, where a
walk by `created_at` misses rows of batched writes that commit after later-stamped ones.
Rows not sealed yet (newer than `OAUTH2_AUDIT_SEAL_DELAY`) appear once sealed; rows
retention removed (seq ≤ `anchor_seq`) are gone, which `chain_bounds` lets a reader see.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from oauth2_server.audit.query import COLUMNS, AuditFilter, AuditQueryError, conditions, prepare
from oauth2_server.audit.rows import row_json
from oauth2_server.db.models import AuditChain, TokenLog

# The largest watermark accepted: seal_seq is a signed 64-bit integer.
MAX_SEQ = 2**63 - 1
AFTER_DOC = (
    "watermark: sealed rows with seal_seq > this (an integer ≥ 0; 0 = from the start), "
    "in seal_seq order; the answer's next_after resumes (not with cursor or order)"
)


def parse_after(raw: str | None) -> int | None:
    """The `after` watermark: ASCII digits, 0 to 2^63-1; None when not given. Raises
    AuditQueryError naming `after`."""
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19) or int(raw) > MAX_SEQ:
        raise AuditQueryError("after", "after must be an integer from 0 to 2^63-1 (a seal_seq)")
    return int(raw)


def check_watermark_mode(f: AuditFilter, cursor: str | None) -> None:
    """`after` pages in `seal_seq` order: a `cursor` or `order=desc` with it is a 400."""
    if cursor is not None:
        raise AuditQueryError("cursor", "cursor cannot be combined with after (use next_after)")
    if f.order != "asc":
        raise AuditQueryError("order", "after returns rows in seal_seq order; order must be asc")


def watermark_rows(session: Session, f: AuditFilter, after: int, limit: int) -> Sequence[Any]:
    """Up to `limit` sealed rows matching `f` with `seal_seq` > `after`, in `seal_seq`
    order (index `ix_oauth2_token_logs_seal_seq`)."""
    dialect = prepare(session)
    stmt = (
        select(*COLUMNS)
        .where(*conditions(f, dialect), TokenLog.seal_seq > after)
        .order_by(TokenLog.seal_seq)
        .limit(limit)
    )
    return session.execute(stmt).all()


def watermark_page(session: Session, f: AuditFilter, after: int, limit: int) -> dict[str, Any]:
    """GET /admin/audit?after=…'s answer: `{"items": [...], "next_cursor": null,
    "after": after, "next_after": int}`: `next_after` is the last row's `seal_seq` (or
    `after` when there was none): ask again with it for the rows sealed since."""
    rows = watermark_rows(session, f, after, limit)
    return {
        "items": [row_json(row) for row in rows],
        "next_cursor": None,
        "after": after,
        "next_after": rows[-1].seal_seq if rows else after,
    }


def chain_bounds(session: Session) -> tuple[int, int]:
    """(`anchor_seq`, `head_seq`) of the chain: rows with seq ≤ anchor were removed by
    retention, rows up to head are sealed. (0, 0) before the first seal."""
    row = session.execute(
        select(AuditChain.anchor_seq, AuditChain.head_seq).where(AuditChain.id == 1)
    ).first()
    return (int(row[0]), int(row[1])) if row else (0, 0)
