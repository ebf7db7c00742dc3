"""Audit exports (`oauth2-server audit export`): every row matching a filter
(`audit.query.AuditFilter`) streamed in keyset batches, as CSV or JSON Lines.

CSV cells are defused against spreadsheet formulas (OWASP CSV injection) and mark NULL
apart from an empty string; JSON Lines keeps JSON's own types.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oauth2_server.audit.query import AuditFilter, AuditQueryError, Position, query_rows
from oauth2_server.audit.rows import EXPORT_FIELDS, row_json

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
