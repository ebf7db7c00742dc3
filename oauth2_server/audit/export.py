"""Audit exports (`oauth2-server audit export`, `GET /admin/audit/export`; issue #11 item
6): every row matching a filter (`audit.query.AuditFilter`) streamed in keyset batches,
as CSV or JSON Lines, with a signed manifest (`audit.manifest`).

Both entry points run the same service: `start_export` (bounds an open `until` to now,
or just after the newest row if later, so the export is a fixed set; reads the chain's
anchor and head, records `audit_export_started`), then `stream_export` (yields the
bytes batch by batch, memory bounded by the batch size; after the last row it signs the
manifest and records `audit_exported` with the row count and the manifest, whose
detached signature lets `GET /admin/audit/exports/{export_id}/manifest` serve it later).

Rows carry every column the hash chain covers plus `seal_seq`, `prev_hash` and
`row_hash` (`audit.rows.EXPORT_FIELDS`), so a sealed row's hash can be recomputed from
the file alone (`audit.export_verify`). CSV cells are defused against spreadsheet
formulas (OWASP CSV injection) and mark NULL apart from an empty string, reversibly: a
cell equal to the NULL marker is NULL; a cell starting with `'` had one `'` added (a
text starting with a formula character, with `'`, or equal to the marker); `flags` are
joined with spaces; `details` is JSON. JSON Lines keeps JSON's own types.
"""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oauth2_server.audit.chain import ChainState, chain_state
from oauth2_server.audit.log import record
from oauth2_server.audit.manifest import (
    ExportFacts,
    ExportSpec,
    build_manifest,
    detach,
    iso,
    sign_manifest,
)
from oauth2_server.audit.query import (
    AUDIT_EXPORT_STARTED,
    AUDIT_EXPORTED,
    AuditFilter,
    AuditQueryError,
    Position,
    query_rows,
)
from oauth2_server.audit.rows import EXPORT_FIELDS, row_json
from oauth2_server.audit.signing import SigningKey
from oauth2_server.db.models import TokenLog

FORMATS = ("csv", "jsonl")
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/jsonl; charset=utf-8"}
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# A text starting with this had it added once more on export (`_csv_cell`).
ESCAPE = "'"

# The CSV cell of a NULL value (PostgreSQL's COPY marker), so NULL and an empty string
# differ; a text value equal to it is escaped like a formula.
CSV_NULL = "\\N"
# A NULL marker: 1–16 printable characters, not a number (it must differ from every
# number and from the empty string).
_NULL_MARKER = re.compile(r"^[^\x00-\x1f\x7f]{1,16}$")
_NUMBER = re.compile(r"^[-+0-9.eE]+$")


def check_csv_null(null: str) -> str:
    """`null` if it can mark NULL in CSV (`_NULL_MARKER`, not a number); raises
    AuditQueryError naming `csv_null` otherwise."""
    if not _NULL_MARKER.match(null) or _NUMBER.match(null):
        raise AuditQueryError(
            "csv_null", "csv_null must be 1–16 printable characters and not a number"
        )
    return null


def _csv_cell(value: Any, null: str = CSV_NULL) -> Any:
    """CSV cell text: `null` for NULL; a text starting with a formula character (OWASP CSV
    injection) or with `'`, or equal to `null`, gets a leading `'`, so a spreadsheet
    never evaluates attacker-controlled text, NULL stays unambiguous and the escape can
    be undone (drop one leading `'`)."""
    if value is None:
        return null
    if isinstance(value, (dict, list)):
        value = json.dumps(value, separators=(",", ":"), sort_keys=True)
    if isinstance(value, str) and (value.startswith((*FORMULA_PREFIXES, ESCAPE)) or value == null):
        return ESCAPE + value
    return value


class RowEncoder:
    """Rows as UTF-8 bytes: CSV (a UTF-8 byte-order mark first when `bom`, then the
    header; NULL as `null`, `CSV_NULL` by default) or JSON Lines (NULL is `null`).
    Raises AuditQueryError naming `format` or `csv_null` for a bad option."""

    def __init__(self, fmt: str, null: str = CSV_NULL, bom: bool = False) -> None:
        if fmt not in FORMATS:
            raise AuditQueryError("format", "format must be csv or jsonl")
        self.fmt = fmt
        self.null = check_csv_null(null) if fmt == "csv" else CSV_NULL
        self.bom = bom and fmt == "csv"
        self._text = io.StringIO()
        self._csv = csv.writer(self._text) if fmt == "csv" else None

    def _take(self) -> bytes:
        data = self._text.getvalue().encode("utf-8")
        self._text.seek(0)
        self._text.truncate()
        return data

    def start(self) -> bytes:
        """The bytes before the first row: BOM and header (CSV), nothing (JSON Lines)."""
        if self._csv is None:
            return b""
        if self.bom:
            self._text.write("\ufeff")
        self._csv.writerow(EXPORT_FIELDS)
        return self._take()

    def encode(self, rows: Sequence[Any]) -> bytes:
        """The bytes of `rows` (with every `EXPORT_FIELDS` column)."""
        for row in rows:
            item = row_json(row, with_hash=True)
            if self._csv is not None:
                flags = item["flags"]
                item["flags"] = None if flags is None else " ".join(flags)
                self._csv.writerow([_csv_cell(item[name], self.null) for name in EXPORT_FIELDS])
            else:
                self._text.write(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
                self._text.write("\n")
        return self._take()


def new_export_id() -> str:
    """A fresh export id: 32 lowercase hex digits (a random UUID)."""
    return uuid.uuid4().hex


EXPORT_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class ExportJob:
    """One export: the filter, the encoder, who exports (`registry.actor.Actor`), the
    key signing its manifest and the issuer named in it, where it goes (`output`: a
    file name, `stdout` or `api`), rows per read, an optional `progress(rows_so_far)`.
    `start_export` sets `chain`; `stream_export` sets `document` (the signed manifest
    document) once every row is out."""

    filter: AuditFilter  # as given
    encoder: RowEncoder
    actor: Any
    key: SigningKey
    issuer: str
    output: str
    batch_size: int = 1000
    progress: Callable[[int], None] | None = None
    export_id: str = field(default_factory=new_export_id)
    until: datetime | None = None  # the range's end: given, or fixed by `start_export`
    chain: ChainState | None = None
    document: dict[str, Any] | None = None

    @property
    def query(self) -> AuditFilter:
        """The filter the rows are read with: as given, ending at `until`."""
        return replace(self.filter, until=self.until or self.filter.until)

    def time_range(self) -> dict[str, str | None]:
        """`since` (null when open) and `until` of the rows read, ISO 8601 UTC."""
        return {"since": iso(self.filter.since), "until": iso(self.query.until)}

    def described(self) -> dict[str, Any]:
        """What the audit rows of this export record: id, filters as given, the time
        range read, format, output."""
        return {
            "export_id": self.export_id,
            "filters": self.filter.described(),
            "range": self.time_range(),
            "format": self.encoder.fmt,
            "output": self.output,
        }


async def _record(
    sessions: async_sessionmaker[AsyncSession], actor: Any, action: str, details: dict[str, Any]
) -> None:
    event = actor.event(action, details=details)
    async with sessions() as session, session.begin():
        await session.run_sync(lambda s: record(s, event))


async def start_export(sessions: async_sessionmaker[AsyncSession], job: ExportJob) -> None:
    """Fix the export's range, read the chain's anchor and head and record
    `audit_export_started`. An open `until` becomes now (UTC), so rows written while the
    export streams, and its own audit rows, are not in it; or just after the newest row
    present, when that row is dated later (clock skew): no row present is left out.
    Raises what the database raises."""
    async with sessions() as session:
        if job.filter.until is None:
            newest = await session.scalar(select(func.max(TokenLog.created_at)))
            now = datetime.now(UTC)
            later = newest.astimezone(UTC) + timedelta(microseconds=1) if newest else now
            job.until = max(now, later)
        job.chain = await session.run_sync(chain_state)
    await _record(sessions, job.actor, AUDIT_EXPORT_STARTED, job.described())


async def stream_export(
    sessions: async_sessionmaker[AsyncSession], job: ExportJob
) -> AsyncIterator[bytes]:
    """The export's bytes, one chunk per `job.batch_size` rows (one short read
    transaction each: no snapshot or lock is held for the whole export). After the last
    row: sign the manifest (`job.document`) and record `audit_exported` (rows, SHA-256,
    manifest and its detached signature) before the last chunk is acknowledged. Call
    `start_export` first."""
    assert job.chain is not None, "start_export first"
    facts = ExportFacts()
    head = job.encoder.start()
    facts.add_bytes(head)
    if head:
        yield head
    after: Position | None = None
    while True:
        async with sessions() as session:
            rows = await session.run_sync(query_rows, job.query, after, job.batch_size)
        if rows:
            data = job.encoder.encode(rows)
            facts.add_rows(rows)
            facts.add_bytes(data)
            yield data
            if job.progress is not None:
                job.progress(facts.rows)
        if len(rows) < job.batch_size:
            break
        after = (rows[-1].created_at, rows[-1].id)
    await _finish(sessions, job, facts)


async def _finish(
    sessions: async_sessionmaker[AsyncSession], job: ExportJob, facts: ExportFacts
) -> None:
    """Sign the manifest of a finished export and record `audit_exported`."""
    encoder = job.encoder
    spec = ExportSpec(
        job.export_id,
        job.issuer,
        encoder.fmt,
        encoder.null,
        encoder.bom,
        job.filter.described(),
        job.time_range(),
        job.filter.order,
        EXPORT_FIELDS,
    )
    manifest = build_manifest(spec, job.chain, facts, datetime.now(UTC))
    job.document = sign_manifest(job.key, manifest)
    details = {
        **job.described(),
        "rows": facts.rows,
        "sha256": manifest["sha256"],
        "manifest": manifest,
        "signature": detach(job.document["jws"]),
    }
    await _record(sessions, job.actor, AUDIT_EXPORTED, details)
