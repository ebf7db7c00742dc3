"""Counts of audit rows grouped by columns (issue #11 item 4: "counts or grouping"):
`GET /admin/audit/summary` and `oauth2-server audit summary`.

The filters are the query's (`audit.query.parse_filter`, `conditions`), so a summary and
the listing it sums agree. `group_by` names 1–3 of `GROUP_COLUMNS`; the answer is the
`MAX_GROUPS` largest groups (count descending, then the grouped values), `total` the rows
matching the filters, and `truncated` whether groups were left out. Every summary is itself
an `audit_read` row (`audit.query.read_audited`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from oauth2_server.audit.ipfilter import prepare
from oauth2_server.audit.query import AuditFilter, AuditQueryError, conditions, count_rows
from oauth2_server.db.models import TokenLog

# Columns a summary may group by (indexed, or low-cardinality).
GROUP_COLUMNS = ("action", "client_id", "subject", "branch_id", "grant_type", "ip", "family_id")
MAX_GROUP_COLUMNS = 3
MAX_GROUPS = 1000
GROUP_BY_DOC = f"comma-separated, 1–{MAX_GROUP_COLUMNS} of {', '.join(GROUP_COLUMNS)} (repeatable)"


def parse_group_by(params: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """`group_by` values (repeatable, each comma-separated) as distinct column names, in
    order. Raises AuditQueryError naming `group_by`."""
    names: list[str] = []
    for value in params.get("group_by") or ():
        for name in value.split(","):
            name = name.strip()
            if name not in GROUP_COLUMNS:
                raise AuditQueryError("group_by", f"group_by {name!r} is not one of {GROUP_BY_DOC}")
            if name not in names:
                names.append(name)
    if not 1 <= len(names) <= MAX_GROUP_COLUMNS:
        raise AuditQueryError("group_by", f"group_by must name {GROUP_BY_DOC}")
    return tuple(names)


def summarize(session: Session, f: AuditFilter, group_by: tuple[str, ...]) -> dict[str, Any]:
    """`{"group_by": [...], "groups": [{column: value, ..., "count": n}], "total": n,
    "truncated": bool}` for the rows matching `f`."""
    dialect = prepare(session)
    columns = [getattr(TokenLog, name) for name in group_by]
    count = func.count().label("count")
    stmt = (
        select(*columns, count)
        .where(*conditions(f, dialect))
        .group_by(*columns)
        .order_by(count.desc(), *columns)
        .limit(MAX_GROUPS + 1)
    )
    rows = session.execute(stmt).all()
    groups = [{**dict(zip(group_by, row[:-1], strict=True)), "count": row[-1]} for row in rows]
    return {
        "group_by": list(group_by),
        "groups": groups[:MAX_GROUPS],
        "total": count_rows(session, f),
        "truncated": len(groups) > MAX_GROUPS,
    }
