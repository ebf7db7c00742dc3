"""Admin API: GET /admin/audit/export (issue #11 item 6), the audit trail streamed as CSV
or JSON Lines, and GET /admin/audit/exports/{export_id}/manifest, its signed manifest.

The export runs the CLI's service (`audit.export`): the same filters as GET /admin/audit
(`audit.query.FILTER_DOCS`), an open `until` bounded to the moment the export starts,
rows streamed in batches of 1,000 (memory bounded), `audit_export_started` and
`audit_exported` rows naming the admin. The answer carries the export's id in
`X-Audit-Export-Id` and a `Link` to its manifest (`rel="describedby"`); the manifest is
signed after the last row and recorded in the `audit_exported` row before the answer
ends, so it can be fetched as soon as the body is complete. An answer cut short (the
database failing mid-stream, the client leaving) ends without its last chunk (a broken
chunked body) and has no manifest: 404.

Invalid parameters and a database that cannot be reached are JSON errors (400 naming
the parameter, 503) before any row is sent.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import with_config
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from typing_extensions import TypedDict

from oauth2_server.admin.answers import AuditRow
from oauth2_server.admin.errors import AdminError, bad_request, json_response
from oauth2_server.admin.http import Actor, admin_endpoint
from oauth2_server.admin.models import STRICT
from oauth2_server.audit import export as audit_export
from oauth2_server.audit.log import record
from oauth2_server.audit.manifest import find_manifest
from oauth2_server.audit.query import (
    AUDIT_EXPORTED,
    AUDIT_READ,
    FILTER_DOCS,
    AuditQueryError,
    parse_filter,
)
from oauth2_server.web.forms import BadRequest, parse_params

endpoint = functools.partial(admin_endpoint, tag="audit")

EXPORT_OPTIONS = {
    "format": "csv or jsonl (required)",
    "csv_null": f"CSV text of a NULL value (default {audit_export.CSV_NULL}); an empty "
    "string is an empty cell",
    "bom": "true: the CSV starts with a UTF-8 byte-order mark (for spreadsheets)",
}
EXPORT_QUERY = {**FILTER_DOCS, **EXPORT_OPTIONS}
BATCH_SIZE = 1000


class ExportRow(AuditRow):
    """One exported row: a JSON Lines line (or a CSV record with the same columns, NULL as
    `csv_null`): the row as GET /admin/audit shows it plus its chain links `prev_hash`
    and `row_hash` (null until sealed), from which `audit verify-export` recomputes it."""

    prev_hash: str | None
    row_hash: str | None


@with_config(STRICT)
class ExportManifest(TypedDict):
    """An export's manifest document: `manifest` (the plain JSON: row count, filters,
    range, first and last `seal_seq`, first `prev_hash`, chain anchor, SHA-256 of the
    body) and `jws`, the ES256 compact JWS (typ `audit-export+jwt`) of its RFC 8785
    canonical JSON. Save it as `FILE.manifest.json` and run `oauth2-server audit
    verify-export FILE --jwks jwks.json`."""

    manifest: dict[str, Any]
    jws: str


def _one(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name) or []
    if len(values) > 1:
        raise AuditQueryError(name, f"{name} may be given once")
    return values[0] if values else None


def _encoder(params: dict[str, list[str]]) -> audit_export.RowEncoder:
    """The encoder `format`, `csv_null` and `bom` ask for. Raises AuditQueryError."""
    fmt = _one(params, "format")
    if fmt is None:
        raise AuditQueryError("format", "format is required: csv or jsonl")
    bom = _one(params, "bom") or "false"
    if bom not in ("true", "false"):
        raise AuditQueryError("bom", "bom must be true or false")
    null = _one(params, "csv_null")
    return audit_export.RowEncoder(
        fmt, audit_export.CSV_NULL if null is None else null, bom == "true"
    )


@endpoint(ExportRow, query=EXPORT_QUERY, errors=(400, 503))
async def export_audit(request: Request, actor: Actor) -> Response:
    """Export `oauth2_token_logs` rows matching every filter given, as CSV or JSON Lines
    (`format`), streamed. The body is the file itself (`text/csv` or `application/jsonl`:
    one ExportRow per line, not one JSON document); `X-Audit-Export-Id` names the
    export, whose signed manifest is at /admin/audit/exports/{export_id}/manifest once
    the body is complete. An open `until`
    is bounded to the start of the export. Recorded as `audit_export_started` and
    `audit_exported` rows (who, filters, row count, manifest)."""
    try:
        params = parse_params(request.url.query, allow_repeats=True)
    except BadRequest as exc:
        raise bad_request(exc.field or "query", exc.description) from None
    try:
        f = parse_filter(params, extra=tuple(EXPORT_OPTIONS))
        encoder = _encoder(params)
    except AuditQueryError as exc:
        raise bad_request(exc.field, exc.message) from None
    service = request.app.state.oauth
    if service.keys.current is None:
        raise AdminError(503, "temporarily_unavailable", "no signing key is loaded")
    job = audit_export.ExportJob(
        f, encoder, actor, service.keys.current, service.issuer, "api", BATCH_SIZE
    )
    bridge = service.bridge
    with bridge.availability.guard():  # a database outage is a 503 before any row
        await audit_export.start_export(bridge.sessionmaker, job)
    manifest_path = f"/admin/audit/exports/{job.export_id}/manifest"
    headers = {
        "X-Audit-Export-Id": job.export_id,
        "Link": f'<{manifest_path}>; rel="describedby"',
        "Content-Disposition": f'attachment; filename="audit-{job.export_id}.{encoder.fmt}"',
        "Cache-Control": "no-store",
    }
    return StreamingResponse(
        audit_export.stream_export(bridge.sessionmaker, job),
        media_type=audit_export.MEDIA_TYPES[encoder.fmt],
        headers=headers,
    )


@endpoint(ExportManifest, errors=(404,))
async def export_manifest(request: Request, actor: Actor) -> Response:
    """The signed manifest of a finished export (`X-Audit-Export-Id` of GET
    /admin/audit/export, or `details.export_id` of its `audit_exported` row, CLI exports
    included). 404 naming `export_id` when no finished export has that id. Each fetch,
    found or not, is an `audit_read` row (`details.read` "manifest", `export_id`, `rows`
    1 or 0) by the admin person."""
    export_id = request.path_params["export_id"]

    def fetch(session: Any) -> dict[str, Any] | None:
        document = None
        if audit_export.EXPORT_ID.match(export_id):
            document = find_manifest(session, AUDIT_EXPORTED, export_id)
        details = {"read": "manifest", "export_id": export_id, "rows": int(document is not None)}
        record(session, actor.event(AUDIT_READ, details=details))
        return document

    document = await request.app.state.oauth.bridge.write(fetch)
    if document is None:
        raise AdminError(404, "not_found", "no finished export has this id", "export_id")
    return json_response(document)
