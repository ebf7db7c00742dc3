"""Querying and exporting `oauth2_token_logs` (GET /admin/audit, `oauth2-server audit`).

Filters (all optional, combined with AND):

| filter | meaning |
|---|---|
| `since`, `until` | `created_at` ≥ since and < until; ISO 8601 (a zone, or UTC), or a date |
| `action` | one or more actions; `admin_*` matches a prefix |
| `client_id`, `subject`, `branch_id`, `ip` | exact match |
| `min_risk` | `risk_score` ≥ this (0–1) |
| `flag` | rows carrying this security flag |
| `order` | `asc` (oldest first, default) or `desc` |

Pages use keyset pagination on (`created_at`, `id`), which every filter index ends with,
so page N costs what page 1 costs. The position travels in a signed cursor
(`oauth2_server.audit.cursors`) bound to the filters. `export` streams any query in batches of
that same keyset read, so memory stays bounded by the batch size, not the result.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any, TextIO

from sqlalchemy import JSON, cast, exists, func, literal, or_, select, text, tuple_
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from oauth2_server.audit.cursors import CursorCodec, CursorError, query_scope
from oauth2_server.audit.log import record
from oauth2_server.audit.rows import EXPORT_FIELDS, columns, row_json
from oauth2_server.db.models import TokenLog

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
FILTER_DOCS: dict[str, str] = {
    "since": "created_at ≥ this instant (ISO 8601; a zone or UTC; or YYYY-MM-DD)",
    "until": "created_at < this instant (same forms); must be after `since`",
    "action": "action, repeatable; a trailing * matches a prefix (admin_*)",
    "client_id": "client id (for admin_* rows: the admin client)",
    "subject": "token subject (user `sub`, or the client id for client_credentials)",
    "branch_id": "branch id",
    "ip": "client IP address",
    "min_risk": "risk_score ≥ this, 0–1",
    "flag": "rows carrying this security flag (see SECURITY.md)",
    "order": "asc (oldest first, default) or desc",
}
FLAG_PATTERN = re.compile(r"^[a-z0-9_]{1,40}$")
ACTION_PATTERN = re.compile(r"^[a-z0-9_]{1,40}\*?$")
COLUMNS = columns(EXPORT_FIELDS)


class AuditQueryError(ValueError):
    """A filter or cursor is invalid; `field` names it (HTTP 400)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class AuditFilter:
    """A validated audit query. Times are timezone-aware UTC."""

    since: datetime | None = None
    until: datetime | None = None
    order: str = "asc"
    client_id: str | None = None
    subject: str | None = None
    branch_id: str | None = None
    ip: str | None = None
    actions: tuple[str, ...] = ()
    min_risk: float | None = None
    flag: str | None = None

    def scope(self) -> str:
        """The cursor scope of this query (its filters' digest)."""
        return query_scope("audit", asdict(self))

    def described(self) -> dict[str, Any]:
        """The filters given (times as ISO 8601 UTC), as an audit row records them."""
        given: dict[str, Any] = {}
        for name, value in asdict(self).items():
            if value in (None, ()) or (name == "order" and value == "asc"):
                continue
            given[name] = value.isoformat() if isinstance(value, datetime) else value
        return given


# Actions of the rows that record who read the audit trail (issue #11: every read and
# export is itself a row): one per page read (API or CLI), and one before and one after
# each export.
AUDIT_READ = "audit_read"
AUDIT_EXPORT_STARTED = "audit_export_started"
AUDIT_EXPORTED = "audit_exported"


def parse_time(field: str, value: str) -> datetime:
    """ISO 8601 instant (UTC when no zone is given) or a date (UTC midnight)."""
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise AuditQueryError(field, f"{field} must be an ISO 8601 date or time") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name) or []
    if len(values) > 1:
        raise AuditQueryError(name, f"{name} may be given once")
    return values[0] if values else None


def parse_filter(params: Mapping[str, Sequence[str]], extra: Sequence[str] = ()) -> AuditFilter:
    """Validate query parameters (name → values) into an AuditFilter.

    `extra` names parameters the caller handles itself (`limit`, `cursor`). Raises
    AuditQueryError naming the first unknown or invalid parameter, or `until` when the
    range is reversed or empty.
    """
    for name in params:
        if name not in FILTER_DOCS and name not in extra:
            raise AuditQueryError(name, f"unknown query parameter {name!r}")
    since = parse_time("since", v) if (v := _one(params, "since")) else None
    until = parse_time("until", v) if (v := _one(params, "until")) else None
    if since and until and until <= since:
        raise AuditQueryError("until", "until must be later than since (the range is reversed)")
    fields: dict[str, Any] = {
        "since": since,
        "until": until,
        "actions": _actions(params),
        "min_risk": _min_risk(params),
        "flag": _flag(params),
        "ip": _ip(params),
        "order": _order(params),
    }
    for name in ("client_id", "subject", "branch_id"):
        value = _one(params, name)
        if value is not None and (not value or len(value) > 200):
            raise AuditQueryError(name, f"{name} must be 1–200 characters")
        fields[name] = value
    return AuditFilter(**fields)


def _actions(params: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    actions = tuple(params.get("action") or ())
    for action in actions:
        if not ACTION_PATTERN.match(action):
            raise AuditQueryError("action", f"action {action!r} is not an action name")
    return actions


def _min_risk(params: Mapping[str, Sequence[str]]) -> float | None:
    if (raw := _one(params, "min_risk")) is None:
        return None
    try:
        min_risk = float(raw)
    except ValueError:
        raise AuditQueryError("min_risk", "min_risk must be a number from 0 to 1") from None
    if not 0 <= min_risk <= 1:
        raise AuditQueryError("min_risk", "min_risk must be a number from 0 to 1")
    return min_risk


def _flag(params: Mapping[str, Sequence[str]]) -> str | None:
    flag = _one(params, "flag")
    if flag is not None and not FLAG_PATTERN.match(flag):
        raise AuditQueryError("flag", f"flag {flag!r} is not a flag name")
    return flag


def _ip(params: Mapping[str, Sequence[str]]) -> str | None:
    ip = _one(params, "ip")
    if ip is None:
        return None
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise AuditQueryError("ip", f"ip {ip!r} is not an IP address") from None


def _order(params: Mapping[str, Sequence[str]]) -> str:
    order = _one(params, "order") or "asc"
    if order not in ("asc", "desc"):
        raise AuditQueryError("order", "order must be asc or desc")
    return order


def parse_limit(raw: str | None) -> int:
    """Page size: 1–MAX_LIMIT, DEFAULT_LIMIT when omitted. Raises AuditQueryError."""
    if raw is None:
        return DEFAULT_LIMIT
    # ASCII digits only: str.isdigit() also accepts '³', which int() refuses.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or not 1 <= int(raw) <= MAX_LIMIT:
        raise AuditQueryError("limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _flag_condition(dialect: str, flag: str) -> Any:
    if dialect == "postgresql":
        return cast(TokenLog.flags, JSONB).contains(cast(literal([flag], JSON), JSONB))
    each = func.json_each(TokenLog.flags).table_valued("value")
    return exists(select(literal(1)).select_from(each).where(each.c.value == flag))


def conditions(f: AuditFilter, dialect: str) -> list[Any]:
    """SQL conditions of a filter. Risky and flagged queries add the literal
    `risk_score > 0`, so PostgreSQL can use the partial index `ix_oauth2_token_logs_risky`
    (every flagged row scores > 0, see `oauth2_server.audit.risk`)."""
    where: list[Any] = []
    if f.since:
        where.append(TokenLog.created_at >= f.since)
    if f.until:
        where.append(TokenLog.created_at < f.until)
    if f.actions:
        exact = [a for a in f.actions if not a.endswith("*")]
        prefixes = [a[:-1] for a in f.actions if a.endswith("*")]
        options = [TokenLog.action.in_(exact)] if exact else []
        options += [TokenLog.action.startswith(p, autoescape=True) for p in prefixes]
        where.append(or_(*options))
    for name in ("client_id", "subject", "branch_id", "ip"):
        value = getattr(f, name)
        if value is not None:
            where.append(getattr(TokenLog, name) == value)
    if f.min_risk:
        where.append(TokenLog.risk_score >= f.min_risk)
    if f.min_risk or f.flag:
        where.append(text("oauth2_token_logs.risk_score > 0"))
    if f.flag:
        where.append(_flag_condition(dialect, f.flag))
    return where


Position = tuple[datetime, int]


def query_rows(
    session: Session, f: AuditFilter, after: Position | None, limit: int
) -> Sequence[Any]:
    """One page of rows matching `f`, after `after` in the filter's order."""
    dialect = session.get_bind().dialect.name
    key = tuple_(TokenLog.created_at, TokenLog.id)
    stmt = select(*COLUMNS).where(*conditions(f, dialect))
    if after is not None:
        stmt = stmt.where(key > tuple_(*after) if f.order == "asc" else key < tuple_(*after))
    if f.order == "asc":
        stmt = stmt.order_by(TokenLog.created_at, TokenLog.id)
    else:
        stmt = stmt.order_by(TokenLog.created_at.desc(), TokenLog.id.desc())
    return session.execute(stmt.limit(limit)).all()


def count_rows(session: Session, f: AuditFilter) -> int:
    """How many rows match `f` (used for an export's progress bar)."""
    dialect = session.get_bind().dialect.name
    stmt = select(func.count()).select_from(TokenLog).where(*conditions(f, dialect))
    return int(session.scalar(stmt) or 0)


def encode_position(row: Any) -> list[Any]:
    return [row.created_at.astimezone(UTC).isoformat(), row.id]


def decode_position(codec: CursorCodec, cursor: str, f: AuditFilter) -> Position:
    """The position inside an audit cursor. Raises AuditQueryError("cursor", …)."""
    try:
        position = codec.decode(cursor, f.scope())
        created, row_id = position
        moment = datetime.fromisoformat(created)
        if moment.tzinfo is None or not isinstance(row_id, int):
            raise CursorError("cursor is invalid or was tampered with")
    except (CursorError, ValueError, TypeError) as exc:
        message = str(exc) if isinstance(exc, CursorError) else "cursor is invalid"
        raise AuditQueryError("cursor", message) from None
    return moment, row_id


def read_audited(
    session: Session, actor: Any, read: Callable[[], dict[str, Any]], f: AuditFilter
) -> dict[str, Any]:
    """`read()` (one page of the audit trail, a dict with `items`), recorded in the same
    transaction as an `audit_read` row by `actor` (`registry.actor.Actor`): the filters
    given, how many rows were returned, and whether a cursor continued a listing."""
    page = read()
    details = {"filters": f.described(), "rows": len(page["items"])}
    record(session, actor.event(AUDIT_READ, details=details))
    return page


def query_page(
    session: Session, codec: CursorCodec, f: AuditFilter, cursor: str | None, limit: int
) -> dict[str, Any]:
    """GET /admin/audit's answer: `{"items": [...], "next_cursor": str | null}`."""
    after = decode_position(codec, cursor, f) if cursor else None
    rows = query_rows(session, f, after, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [row_json(row) for row in rows],
        "next_cursor": codec.encode(f.scope(), encode_position(rows[-1])) if more else None,
    }


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


# The CSV cell of a NULL value (PostgreSQL's COPY marker), so NULL and an empty string
# differ; a text value equal to it is escaped like a formula.
CSV_NULL = "\\N"


def _csv_cell(value: Any, null: str = CSV_NULL) -> Any:
    """CSV cell text: `null` for NULL; a leading formula character (OWASP CSV injection),
    or a text equal to `null`, is escaped with `'` so a spreadsheet never evaluates
    attacker-controlled text and NULL stays unambiguous."""
    if value is None:
        return null
    if isinstance(value, (dict, list)):
        value = json.dumps(value, separators=(",", ":"), sort_keys=True)
    if isinstance(value, str) and (value.startswith(FORMULA_PREFIXES) or value == null):
        return "'" + value
    return value


class RowWriter:
    """Writes rows as CSV (header first; NULL as `null`, `CSV_NULL` by default; a UTF-8
    byte-order mark first when `bom`, for spreadsheets) or JSON Lines (NULL is `null`)
    to a text stream. Raises AuditQueryError for another format."""

    def __init__(self, out: TextIO, fmt: str, null: str = CSV_NULL, bom: bool = False) -> None:
        if fmt not in ("csv", "jsonl"):
            raise AuditQueryError("format", "format must be csv or jsonl")
        self.out = out
        self.fmt = fmt
        self.null = null
        self._csv = csv.writer(out) if fmt == "csv" else None
        if self._csv is not None:
            if bom:
                out.write("\ufeff")
            self._csv.writerow(EXPORT_FIELDS)

    def write(self, rows: Sequence[Any]) -> None:
        for row in rows:
            item = row_json(row, with_hash=True)
            if self._csv is not None:
                item["flags"] = " ".join(item["flags"] or [])
                self._csv.writerow([_csv_cell(item[name], self.null) for name in EXPORT_FIELDS])
            else:
                self.out.write(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
                self.out.write("\n")


async def export(
    sessionmaker: async_sessionmaker[AsyncSession],
    f: AuditFilter,
    writer: RowWriter,
    batch_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Stream every row matching `f` to `writer`, `batch_size` rows per keyset read (one
    short read transaction each, so no snapshot or lock is held for the whole export).
    Calls `progress(rows_so_far)` after each batch. Returns the number of rows."""
    after: Position | None = None
    total = 0
    while True:
        async with sessionmaker() as session:
            rows = await session.run_sync(query_rows, f, after, batch_size)
        if not rows:
            return total
        writer.write(rows)
        total += len(rows)
        if progress is not None:
            progress(total)
        if len(rows) < batch_size:
            return total
        after = (rows[-1].created_at, rows[-1].id)
