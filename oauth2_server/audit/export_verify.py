"""Offline verification of an audit export (`oauth2-server audit verify-export`, issue
#11 item 6): no database, no server; the export file, its manifest document
(`audit.manifest`) and the issuer's JWKS (a saved copy of its `jwks_uri`, ISSUER/oauth2/jwks).

Checks, in order, stopping at nothing but the first bad row (every other check still
runs, so the report lists each kind of problem once):

1. the manifest's ES256 signature under the JWKS, `typ` `audit-export+jwt`, and its
   plain fields equal to the signed ones (`manifest.read_manifest`); the signed fields
   are what the rest checks against;
2. the file's SHA-256 and size;
3. each row: parsed by the manifest's `format` (CSV: its `csv_null`, `bom`, header);
   rows in (`created_at`, `id`) order (`order`); a sealed row's `row_hash` recomputed
   from its content, `seal_seq` and `prev_hash` (`audit.canonical`, either chain
   format); consecutive `seal_seq` linked (`prev_hash` = the previous row's
   `row_hash`); in a `contiguous` export, no `seal_seq` missing;
4. the row count, sealed row count, first and last `seal_seq` and the first row's
   `prev_hash` against the manifest; in a contiguous export whose first sealed row
   follows the chain's anchor, that `prev_hash` equals the anchor's hash.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from oauth2_server.audit.canonical import matching_format
from oauth2_server.audit.export import ESCAPE
from oauth2_server.audit.manifest import ManifestError, read_manifest

INT_FIELDS = ("id", "seal_seq")
CHUNK = 1 << 20


class ExportFormatError(ValueError):
    """A line that cannot be read as an export row (the message names what is wrong)."""


@dataclass
class ExportReport:
    """Outcome of `verify_export`: `problems` in the order found (empty when ok), what
    the file holds, and the signed manifest's identity (`export_id`, `issuer`)."""

    manifest: dict[str, Any] = field(default_factory=dict)
    rows: int = 0
    sealed_rows: int = 0
    sha256: str = ""
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "ok": self.ok,
            "problem": self.problems[0] if self.problems else None,
            "problems": self.problems,
            "export_id": m.get("export_id"),
            "issuer": m.get("issuer"),
            "format": m.get("format"),
            "rows": self.rows,
            "sealed_rows": self.sealed_rows,
            "first_seal_seq": m.get("first_seal_seq"),
            "last_seal_seq": m.get("last_seal_seq"),
            "sha256": self.sha256,
        }


def _file_digest(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as raw:
        while chunk := raw.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _row(item: Mapping[str, Any], columns: list[str]) -> SimpleNamespace:
    """A row as `audit.canonical` reads it: `created_at` a datetime, the rest JSON."""
    if list(item) != columns:
        raise ExportFormatError(f"its columns are not the manifest's {columns}")
    try:
        created = datetime.fromisoformat(str(item["created_at"]).replace("Z", "+00:00"))
    except ValueError:
        raise ExportFormatError("created_at is not an ISO 8601 time") from None
    if created.tzinfo is None:
        raise ExportFormatError("created_at has no time zone")
    for name in INT_FIELDS:
        if item[name] is not None and type(item[name]) is not int:
            raise ExportFormatError(f"{name} is not an integer")
    return SimpleNamespace(**{**item, "created_at": created})


def _jsonl_rows(path: Path, columns: list[str]) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as raw:
        for number, line in enumerate(raw, start=1):
            try:
                if not line.endswith(b"\n"):
                    raise ExportFormatError("the line does not end with a newline")
                item = json.loads(line.decode("utf-8"))
                if not isinstance(item, dict):
                    raise ExportFormatError("the line is not a JSON object")
                yield number, _row(item, columns)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ExportFormatError(f"line {number}: not UTF-8 JSON ({exc})") from None
            except ExportFormatError as exc:
                raise ExportFormatError(f"line {number}: {exc}") from None


def _csv_value(name: str, cell: str, null: str) -> Any:
    """The value of a CSV cell written by `audit.export._csv_cell` (its inverse)."""
    if cell == null:
        return None
    if name in INT_FIELDS:
        if not (cell.isascii() and cell.lstrip("-").isdigit()):
            raise ExportFormatError(f"{name} is not an integer")
        return int(cell)
    if name == "risk_score":
        try:
            return float(cell)
        except ValueError:
            raise ExportFormatError("risk_score is not a number") from None
    text = cell[1:] if cell.startswith(ESCAPE) else cell
    if name == "flags":
        return text.split(" ") if text else []
    if name == "details":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise ExportFormatError("details is not JSON") from None
    return text


def _csv_rows(path: Path, manifest: Mapping[str, Any]) -> Iterator[tuple[int, Any]]:
    columns, null = list(manifest["columns"]), str(manifest.get("csv_null"))
    with path.open(encoding="utf-8", newline="") as text:
        try:
            if manifest.get("bom") and text.read(1) != "\ufeff":
                raise ExportFormatError("line 1: the UTF-8 byte-order mark is missing")
            reader = csv.reader(text, strict=True)
            if next(reader, None) != columns:
                raise ExportFormatError("line 1: the header is not the manifest's columns")
            while True:
                number = reader.line_num + 1
                cells = next(reader, None)
                if cells is None:
                    return
                if len(cells) != len(columns):
                    raise ExportFormatError(
                        f"line {number}: {len(cells)} cells, not {len(columns)}"
                    )
                try:
                    values = {
                        n: _csv_value(n, c, null) for n, c in zip(columns, cells, strict=True)
                    }
                    yield number, _row(values, columns)
                except ExportFormatError as exc:
                    raise ExportFormatError(f"line {number}: {exc}") from None
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ExportFormatError(f"not UTF-8 CSV: {exc}") from None


@dataclass
class _Sealed:
    line: int
    seal_seq: int
    prev_hash: str
    row_hash: str


class RowChecker:
    """Checks an export's rows in file order against the chain's rules (module docstring,
    step 3); `problem` is the first bad row's message, naming its line."""

    def __init__(self, manifest: Mapping[str, Any]) -> None:
        self.descending = manifest.get("order") == "desc"
        self.contiguous = bool(manifest.get("contiguous"))
        self.rows = 0
        self.sealed_rows = 0
        self.first: _Sealed | None = None
        self.last: _Sealed | None = None
        self.position: tuple[datetime, int] | None = None
        self.problem: str | None = None

    def feed(self, line: int, row: Any) -> bool:
        """Check one row; False once a problem is found."""
        self.rows += 1
        where = f"line {line} (row id {row.id}"
        position = (row.created_at, row.id)
        if self.position is not None and (position <= self.position) != self.descending:
            return self._fail(f"{where}) is out of (created_at, id) order: rows were moved")
        self.position = position
        if row.seal_seq is None:
            if row.prev_hash is not None or row.row_hash is not None:
                return self._fail(f"{where}) has hashes but no seal_seq: the row was edited")
            return True
        where += f", seal_seq {row.seal_seq})"
        if not isinstance(row.prev_hash, str) or not isinstance(row.row_hash, str):
            return self._fail(f"{where} is sealed but lacks prev_hash or row_hash")
        if matching_format(row.prev_hash, row, row.seal_seq, row.row_hash) is None:
            return self._fail(f"{where}: its content does not match its row_hash: altered")
        sealed = _Sealed(line, row.seal_seq, row.prev_hash, row.row_hash)
        if self.last is not None and not self._links(self.last, sealed, where):
            return False
        self.sealed_rows += 1
        self.first = self.first or sealed
        self.last = sealed
        return True

    def _links(self, last: _Sealed, this: _Sealed, where: str) -> bool:
        """The chain between two sealed rows next to each other in the file."""
        older, newer = (this, last) if self.descending else (last, this)
        if newer.seal_seq <= older.seal_seq:
            return self._fail(f"{where}: seal_seq does not follow line {last.line}'s order")
        if newer.seal_seq == older.seal_seq + 1:
            if newer.prev_hash != older.row_hash:
                return self._fail(
                    f"{where} does not link to line {last.line} (seal_seq {last.seal_seq}): "
                    "prev_hash differs from its row_hash"
                )
        elif self.contiguous:
            gap = f"{older.seal_seq + 1}" + (
                f"–{newer.seal_seq - 1}" if newer.seal_seq - 1 > older.seal_seq + 1 else ""
            )
            return self._fail(
                f"{where}: sealed row(s) with seal_seq {gap} are missing between line "
                f"{last.line} and this one"
            )
        return True

    def _fail(self, message: str) -> bool:
        self.problem = message
        return False


def _totals(checker: RowChecker, manifest: Mapping[str, Any]) -> list[str]:
    """Step 4: what the rows add up to, against the signed manifest."""
    problems = []
    first, last = checker.first, checker.last
    found = {
        "rows": checker.rows,
        "sealed_rows": checker.sealed_rows,
        "first_seal_seq": first.seal_seq if first else None,
        "last_seal_seq": last.seal_seq if last else None,
        "first_prev_hash": first.prev_hash if first else None,
        "last_row_hash": last.row_hash if last else None,
    }
    for name, value in found.items():
        if manifest.get(name) != value:
            problems.append(f"the file has {name} {value!r}, the manifest {manifest.get(name)!r}")
    anchor = manifest.get("chain") or {}
    oldest = last if checker.descending else first
    follows_anchor = oldest is not None and oldest.seal_seq == anchor.get("anchor_seq", -2) + 1
    if checker.contiguous and follows_anchor and oldest.prev_hash != anchor.get("anchor_hash"):
        problems.append(
            f"line {oldest.line}: the oldest sealed row does not link to the chain's anchor "
            f"(seal_seq {anchor.get('anchor_seq')})"
        )
    return problems


def verify_export(path: Path, document: Any, jwks: Mapping[str, Any] | None) -> ExportReport:
    """Verify export `path` against its manifest `document` (`{"manifest", "jws"}`) and
    the issuer's keys `jwks` (`audit.signing.public_keys`; None: the signature cannot be
    checked, which is a problem). Returns the report; raises OSError for a file that
    cannot be read."""
    report = ExportReport()
    if jwks is None:
        report.problems.append(
            "no JWKS given (--jwks): the manifest's signature cannot be checked; save the "
            "issuer's JWKS (curl ISSUER/oauth2/jwks) and pass it"
        )
        return report
    try:
        manifest = read_manifest(document, jwks)
    except ManifestError as exc:
        report.problems.append(str(exc))
        return report
    report.manifest = manifest
    report.sha256, report.bytes = _file_digest(path)
    if report.sha256 != manifest.get("sha256") or report.bytes != manifest.get("bytes"):
        report.problems.append(
            f"the file's SHA-256 {report.sha256} ({report.bytes} bytes) is not the manifest's "
            f"{manifest.get('sha256')} ({manifest.get('bytes')} bytes): the file was changed"
        )
    checker = RowChecker(manifest)
    try:
        rows = (
            _csv_rows(path, manifest)
            if manifest.get("format") == "csv"
            else _jsonl_rows(path, list(manifest.get("columns") or []))
        )
        for line, row in rows:
            if not checker.feed(line, row):
                break
    except ExportFormatError as exc:
        checker.problem = str(exc)
    if checker.problem is not None:
        report.problems.insert(0, checker.problem)  # the first bad line leads
    else:
        report.problems.extend(_totals(checker, manifest))
    report.rows, report.sealed_rows = checker.rows, checker.sealed_rows
    return report
