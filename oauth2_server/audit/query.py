"""Querying `oauth2_token_logs` (GET /admin/audit, `oauth2-server audit query`; the
export in `audit.export` streams the same queries).

Filters (all optional, combined with AND; `FILTER_DOCS` is their one description):

| filter | meaning |
|---|---|
| `since`, `until` | `created_at` ≥ since, < until: ISO 8601, a date, or relative (`-1h`) |
| `action` | one or more actions; `admin_*` matches a prefix |
| `client_id`, `subject`, `branch_id`, `family_id`, `token_id`, `request_id` | exact match |
| `target_client_id` | the client a change or revocation is about (`details.target_client_id`) |
| `target_subject`, `target_branch_id` | the user / branch a row is about (`subject`, `branch_id`) |
| `ip` | an address (exact) or a network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`) |
| `min_risk` | `risk_score` ≥ this (0–1) |
| `flag` | rows carrying this security flag |
| `order` | `asc` (oldest first, default) or `desc` |

Pages use keyset pagination on (`created_at`, `id`), which every filter index ends with,
so page N costs what page 1 costs. The position travels in a signed cursor
(`oauth2_server.audit.cursors`) bound to the filters. Every page read is itself recorded
(`read_audited`).

Incremental pulls (issue #11 item 7) use the watermark `after` instead of a cursor
(`audit.watermark`): sealed rows with `seal_seq` > `after`, in `seal_seq` order. A row
is sealed once, by one sealer at a time, with the next sequence number, so the sealed
rows kept are always seq anchor+1..head with no gap: a reader that resumes from the last
`seal_seq` it saw gets every row exactly once, whenever it committed (`created_at` is not
a watermark: batched rows commit after later-stamped ones).

Who the row is about, apart from who acted: the actor of an `admin_*` row is its
`client_id` (the admin client) and `details` (person, or CLI operator); `subject` and
`branch_id` never hold the actor, only the user / branch the event concerns (a token's
user, the user an admin changed, the account a sign-in tried), so `target_subject` and
`target_branch_id` read those columns, and `target_client_id` reads
`details.target_client_id` (the client an admin change or a revoked token belongs to).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import JSON, cast, exists, func, literal, literal_column, or_, select, text, tuple_
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from oauth2_server.audit.cursors import CursorCodec, CursorError, query_scope
from oauth2_server.audit.errors import AuditQueryError
from oauth2_server.audit.ipfilter import (
    TICK,
    Window,
    ip_condition,
    is_network,
    network_page,
    parse_ip,
    prepare,
    table_span,
    window_conditions,
)
from oauth2_server.audit.log import record
from oauth2_server.audit.rows import EXPORT_FIELDS, columns, row_json
from oauth2_server.db.models import TokenLog

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
FILTER_DOCS: dict[str, str] = {
    "since": "created_at ≥ this instant (ISO 8601; a zone or UTC; or YYYY-MM-DD; or "
    "relative to now: -90s, -30m, -1h, -7d)",
    "until": "created_at < this instant (same forms); must be after `since`",
    "action": "action, repeatable; a trailing * matches a prefix (admin_*)",
    "client_id": "client id (for admin_* rows: the admin client)",
    "target_client_id": "the client a change is about: an admin_* change's client, a "
    "revoked token's client (details.target_client_id; client_id is who acted)",
    "target_subject": "the user the row is about: a token's, sign-in's or consent's user, "
    "the user an admin_* change or a revocation concerns (the subject column: it never "
    "holds the acting admin, who is client_id and details.person/operator)",
    "target_branch_id": "the branch the row is about (the branch_id column: a token's "
    "upstream branch, the branch an admin_* change concerns; never the actor)",
    "subject": "token subject (user `sub`, or the client id for client_credentials); for "
    "admin_* rows: the user the change is about",
    "branch_id": "branch id (for admin_* rows: the branch the change is about)",
    "family_id": "refresh-token family (one grant: its code, tokens, reuse and revocation)",
    "token_id": "token id: an access token's jti, or a refresh token's digest prefix",
    "request_id": "request id (X-Request-ID) of the HTTP request that wrote the row",
    "ip": "client IP address (exact), or a network in CIDR notation: 10.0.0.0/8, "
    "2001:db8::/32 (host bits must be zero; /32 and /128 are exact)",
    "min_risk": "risk_score ≥ this, 0–1",
    "flag": "rows carrying this security flag (see SECURITY.md)",
    "order": "asc (oldest first, default) or desc",
}
FLAG_PATTERN = re.compile(r"^[a-z0-9_]{1,40}$")
ACTION_PATTERN = re.compile(r"^[a-z0-9_]{1,40}\*?$")
COLUMNS = columns(EXPORT_FIELDS)


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
    target_client_id: str | None = None
    target_subject: str | None = None
    target_branch_id: str | None = None
    family_id: str | None = None
    token_id: str | None = None
    request_id: str | None = None
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


RELATIVE_TIME = re.compile(r"^-([0-9]{1,7})([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(field: str, value: str, now: datetime | None = None) -> datetime:
    """ISO 8601 instant (UTC when no zone is given), a date (UTC midnight), or a time
    relative to `now` (default: the current time, UTC): `-90s`, `-30m`, `-1h`, `-7d`.
    Raises AuditQueryError naming `field`."""
    if relative := RELATIVE_TIME.match(value):
        seconds = int(relative[1]) * _UNIT_SECONDS[relative[2]]
        if seconds > 100 * 366 * 86400:
            raise AuditQueryError(field, f"{field} reaches back more than 100 years")
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
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
        "ip": parse_ip(_one(params, "ip")),
        "order": _order(params),
    }
    for name, longest in TEXT_FILTERS.items():
        value = _one(params, name)
        if value is not None and (not value or len(value) > longest):
            raise AuditQueryError(name, f"{name} must be 1–{longest} characters")
        fields[name] = value
    return AuditFilter(**fields)


# Exact-match text filters and their longest value (the column's length).
TEXT_FILTERS = {
    "client_id": 200,
    "subject": 200,
    "branch_id": 200,
    "target_client_id": 200,
    "target_subject": 200,
    "target_branch_id": 200,
    "family_id": 64,
    "token_id": 64,
    "request_id": 64,
}
# The expression of `details.target_client_id`, written exactly as the index of
# migration 0008 is, so PostgreSQL and SQLite use it.
_TARGET_CLIENT = {
    "postgresql": "(oauth2_token_logs.details ->> 'target_client_id')",
    "sqlite": "json_extract(oauth2_token_logs.details, '$.target_client_id')",
}


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


# Exact-match filters and the column each reads (`target_*`: see the module docstring).
EXACT_COLUMNS = {
    "client_id": "client_id",
    "subject": "subject",
    "target_subject": "subject",
    "branch_id": "branch_id",
    "target_branch_id": "branch_id",
    "family_id": "family_id",
    "token_id": "token_id",
    "request_id": "request_id",
}


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
    for name, column in EXACT_COLUMNS.items():
        value = getattr(f, name)
        if value is not None:
            where.append(getattr(TokenLog, column) == value)
    if f.ip is not None:
        where.append(ip_condition(dialect, f.ip))
    if f.target_client_id is not None:
        where.append(literal_column(_TARGET_CLIENT[dialect]) == f.target_client_id)
    if f.min_risk:
        where.append(TokenLog.risk_score >= f.min_risk)
    if f.min_risk or f.flag:
        where.append(text("oauth2_token_logs.risk_score > 0"))
    if f.flag:
        where.append(_flag_condition(dialect, f.flag))
    return where


Position = tuple[datetime, int]


def page_statement(
    session: Session, f: AuditFilter, after: Position | None, limit: int, *extra: Any
) -> Any:
    """The SELECT of one page of rows matching `f` (and the `extra` conditions), after
    `after` in the filter's order (keyset on (`created_at`, `id`))."""
    dialect = prepare(session)
    key = tuple_(TokenLog.created_at, TokenLog.id)
    stmt = select(*COLUMNS).where(*conditions(f, dialect), *extra)
    if after is not None:
        stmt = stmt.where(key > tuple_(*after) if f.order == "asc" else key < tuple_(*after))
    if f.order == "asc":
        stmt = stmt.order_by(TokenLog.created_at, TokenLog.id)
    else:
        stmt = stmt.order_by(TokenLog.created_at.desc(), TokenLog.id.desc())
    return stmt.limit(limit)


def query_rows(
    session: Session, f: AuditFilter, after: Position | None, limit: int
) -> Sequence[Any]:
    """One page of rows matching `f`, after `after` in the filter's order. A network `ip`
    filter on PostgreSQL reads it in time windows (`ipfilter.network_page`)."""
    if not (is_network(f.ip) and prepare(session) == "postgresql"):
        return session.execute(page_statement(session, f, after, limit)).all()
    span = table_span(session, f.since, f.until)
    if span is not None and after is not None:  # the page starts at the keyset position
        if f.order == "asc":
            span = replace(span, start=max(span.start, after[0]))
        else:
            span = replace(span, end=min(span.end, after[0] + TICK))

    def read(window: Window, n: int, unordered: bool) -> Sequence[Any]:
        stmt = page_statement(session, f, after, n, *window_conditions(window))
        if unordered:  # every row of the window first, then the page: see ipfilter
            rows = stmt.limit(None).order_by(None).cte("window_rows").prefix_with("MATERIALIZED")
            keys = (rows.c.created_at, rows.c.id)
            order = keys if f.order == "asc" else (keys[0].desc(), keys[1].desc())
            stmt = select(*rows.c).order_by(*order).limit(n)
        return session.execute(stmt).all()

    return network_page(span, f.order == "desc", limit, read)


def count_rows(session: Session, f: AuditFilter) -> int:
    """How many rows match `f` (used for an export's progress bar)."""
    dialect = prepare(session)
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
    """`read()` (one page of the audit trail, a dict with `items`, or a summary with
    `groups`), recorded in the same transaction as an `audit_read` row by `actor`
    (`registry.actor.Actor`): the filters given, how many rows (or groups) were returned,
    a summary's `group_by` and a watermark read's `after` (`audit.watermark`)."""
    page = read()
    details = {"filters": f.described(), "rows": len(page.get("items", page.get("groups", ())))}
    for name in ("group_by", "after"):  # a summary's grouping; a watermark read's start
        if name in page:
            details[name] = page[name]
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
