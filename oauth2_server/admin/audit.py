"""Admin API: GET /admin/audit, the audit trail queried with keyset pagination.

Filters and their meaning are `audit_query.FILTER_DOCS`; the same filters drive
`oauth2-server audit query` and `audit export`. A cursor altered by the client, or
reused with other filters, is a 400 naming `cursor`; a reversed time range is a 400
naming `until`.
"""

from __future__ import annotations

import functools
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from oauth2_server.admin import answers
from oauth2_server.admin.errors import bad_request, json_response
from oauth2_server.admin.http import Actor, admin_endpoint, cursor_codec
from oauth2_server.audit.query import (
    FILTER_DOCS,
    MAX_LIMIT,
    AuditQueryError,
    parse_filter,
    parse_limit,
    query_page,
    read_audited,
)
from oauth2_server.audit.summary import GROUP_BY_DOC, parse_group_by, summarize
from oauth2_server.audit.watermark import (
    AFTER_DOC,
    check_watermark_mode,
    parse_after,
    watermark_page,
)
from oauth2_server.web.forms import BadRequest, parse_params

endpoint = functools.partial(admin_endpoint, tag="audit")

QUERY = {
    **FILTER_DOCS,
    "limit": f"page size, 1–{MAX_LIMIT} (default 100)",
    "cursor": "next_cursor of the previous page (same filters)",
    "after": AFTER_DOC,
}


@endpoint(answers.AuditPage, query=QUERY)
async def query_audit(request: Request, actor: Actor) -> Response:
    """Query `oauth2_token_logs`: rows matching every filter given, oldest first (or
    `order=desc`), `limit` per page; `next_cursor` fetches the next page. With `after`
    (a watermark, issue #11 item 7): sealed rows with `seal_seq` > after in `seal_seq`
    order, and `next_after` to ask with next (`audit.watermark`). Each page read writes an
    `audit_read` row (who, which filters, how many rows), committed with it."""
    try:
        params = parse_params(request.url.query, allow_repeats=True)
    except BadRequest as exc:  # malformed, or a control character (naming the parameter)
        raise bad_request(exc.field or "query", exc.description) from None
    try:
        for name in ("limit", "cursor", "after"):
            if len(params.get(name, [])) > 1:
                raise AuditQueryError(name, f"{name} may be given once")
        f = parse_filter(params, extra=("limit", "cursor", "after"))
        limit = parse_limit((params.get("limit") or [None])[0])
        cursor = (params.get("cursor") or [None])[0]
        after = parse_after((params.get("after") or [None])[0])
        if after is not None:
            check_watermark_mode(f, cursor)
        codec = cursor_codec(request)

        def page_of(s: Any) -> dict[str, Any]:
            if after is not None:
                return watermark_page(s, f, after, limit)
            return query_page(s, codec, f, cursor, limit)

        page = await request.app.state.oauth.bridge.write(
            lambda s: read_audited(s, actor, lambda: page_of(s), f)
        )
    except AuditQueryError as exc:
        raise bad_request(exc.field, exc.message) from None
    return json_response(page)


SUMMARY_QUERY = {**FILTER_DOCS, "group_by": GROUP_BY_DOC}


@endpoint(answers.AuditSummary, query=SUMMARY_QUERY)
async def summarize_audit(request: Request, actor: Actor) -> Response:
    """Count `oauth2_token_logs` rows matching every filter given, grouped by
    `group_by` (e.g. `group_by=action,ip&since=-1h`): the largest groups first. Each
    summary writes an `audit_read` row, committed with it."""
    try:
        params = parse_params(request.url.query, allow_repeats=True)
    except BadRequest as exc:
        raise bad_request(exc.field or "query", exc.description) from None
    try:
        f = parse_filter(params, extra=("group_by",))
        group_by = parse_group_by(params)
        summary = await request.app.state.oauth.bridge.write(
            lambda s: read_audited(s, actor, lambda: summarize(s, f, group_by), f)
        )
    except AuditQueryError as exc:
        raise bad_request(exc.field, exc.message) from None
    return json_response(summary)
