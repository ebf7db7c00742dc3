"""The columns of an `oauth2_token_logs` row as audit code reads them, named once.

The query and export (`audit.query`), the admin API's answer and the hash chain
(`audit.canonical`, `audit.chain`) all read rows through these names and this JSON form,
so a column added to the audit trail is added here once. (Migration 0003 spells the same
columns out too: it is frozen history, not a second definition.)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any

from sqlalchemy.orm import InstrumentedAttribute

from oauth2_server.db.models import TokenLog

# Every column a row's hash covers, in export order (the CSV header, the JSON keys). The
# chain's formats (`audit.canonical`) hash exactly these: changing them is a new chain
# format that keeps the old list for rows sealed before (tests/unit pins both).
CONTENT_FIELDS: tuple[str, ...] = (
    "id", "created_at", "action", "client_id", "subject", "branch_id", "grant_type",
    "token_id", "family_id", "ip", "user_agent", "request_id", "risk_score", "flags", "details",
)  # fmt: skip
# What GET /admin/audit and `audit export` show (`prev_hash` and `row_hash` on export
# only: with them an export's sealed rows can be checked offline, `audit.export_verify`).
EXPORT_FIELDS: tuple[str, ...] = (*CONTENT_FIELDS, "seal_seq", "prev_hash", "row_hash")
# What sealing and verification read: the content and the chain links.
CHAIN_FIELDS: tuple[str, ...] = (*CONTENT_FIELDS, "seal_seq", "prev_hash", "row_hash")


def columns(names: Sequence[str]) -> tuple[InstrumentedAttribute[Any], ...]:
    """The `TokenLog` columns named `names`, for `select(*columns(...))`."""
    return tuple(getattr(TokenLog, name) for name in names)


def content_json(row: Any) -> dict[str, Any]:
    """A row's content (`CONTENT_FIELDS`) as JSON values: `created_at` ISO 8601 UTC with
    `Z`, `risk_score` a number (0–1, two decimals). What the chain's current format
    hashes and what an export shows, so an export can be checked against its hashes."""
    item = {name: getattr(row, name) for name in CONTENT_FIELDS}
    item["created_at"] = row.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    item["risk_score"] = float(row.risk_score)
    return item


def row_json(row: Any, with_hash: bool = False) -> dict[str, Any]:
    """A row as JSON: `content_json` plus `seal_seq`, and `prev_hash` and `row_hash`
    only on export."""
    item = content_json(row)
    item["seal_seq"] = row.seal_seq
    if with_hash:
        item["prev_hash"] = row.prev_hash
        item["row_hash"] = row.row_hash
    return item
