"""The signed manifest of an audit export (issue #11 item 6).

Every export, from the CLI (`audit export --output FILE` writes `FILE.manifest.json`) or
the admin API (`GET /admin/audit/export`; its manifest is kept in the export's
`audit_exported` row and served by `GET /admin/audit/exports/{export_id}/manifest`),
gets a manifest document

    {"manifest": {...}, "jws": "<compact JWS>"}

where `manifest` is the plain JSON for reading and `jws` signs exactly it: an ES256
compact JWS (RFC 7515) with header `{"alg": "ES256", "kid": …, "typ": "audit-export+jwt"}`
whose payload is the RFC 8785 canonical JSON of `manifest`, signed with the issuer's
current signing key (`audit.signing`). Canonical bytes make the signature independent of
how the JSON was stored (PostgreSQL's JSONB reorders keys), so the audit row keeps only
the JWS header and signature (`detach`) and the JWS is rebuilt from the row (`attach`).

Manifest fields (`build_manifest`): `version` (1), `export_id`, `issuer`, `generated_at`
(ISO 8601 UTC) and `iat` (seconds), `format` (`csv` or `jsonl`), `csv_null` and `bom`
(CSV only), `columns`, `filters` (as given), `time_range` (`since`, null when open;
`until` as given, else the start of the export, or just after the newest row then
present if that is later), `order`, `contiguous` (true when only `since`/`until`
filter: every row of the range is in the file, so sealed rows have consecutive
`seal_seq`), `rows`,
`sealed_rows`, `first_seal_seq`, `last_seal_seq`, `first_prev_hash`, `last_row_hash`,
`first_created_at`, `last_created_at` (file order), `chain` (the chain's `anchor_seq`,
`anchor_hash`, `head_seq`, `head_hash` when the export started), `bytes` and `sha256`
(lowercase hex SHA-256 of the file's bytes, BOM and header included).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import rfc8785
from jwt.api_jws import PyJWS
from sqlalchemy import literal_column, select
from sqlalchemy.orm import Session

from oauth2_server.audit.signing import ALG, SigningKey, StatementError, verify_statement
from oauth2_server.db.models import TokenLog

TYP = "audit-export+jwt"
MANIFEST_VERSION = 1
# Filters that only bound the time range (or order it): an export with no other filter
# holds every row of its range.
RANGE_ONLY = frozenset({"since", "until", "order"})


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with `Z` (as `audit.rows.content_json` writes `created_at`)."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class ExportFacts:
    """What an export wrote, gathered while streaming: its bytes (count and SHA-256)
    and, in file order, its rows' count, sealed count, first and last `seal_seq`, the
    first sealed row's `prev_hash`, the last's `row_hash`, first and last `created_at`."""

    digest: Any = field(default_factory=hashlib.sha256)
    bytes: int = 0
    rows: int = 0
    sealed_rows: int = 0
    first_seal_seq: int | None = None
    last_seal_seq: int | None = None
    first_prev_hash: str | None = None
    last_row_hash: str | None = None
    first_created_at: datetime | None = None
    last_created_at: datetime | None = None

    def add_bytes(self, data: bytes) -> None:
        self.digest.update(data)
        self.bytes += len(data)

    def add_rows(self, rows: Sequence[Any]) -> None:
        """Count rows (with `created_at`, `seal_seq`, `prev_hash`, `row_hash`) in file order."""
        for row in rows:
            self.rows += 1
            if self.first_created_at is None:
                self.first_created_at = row.created_at
            self.last_created_at = row.created_at
            if row.seal_seq is None:
                continue
            self.sealed_rows += 1
            if self.first_seal_seq is None:
                self.first_seal_seq, self.first_prev_hash = row.seal_seq, row.prev_hash
            self.last_seal_seq, self.last_row_hash = row.seal_seq, row.row_hash


@dataclass(frozen=True)
class ExportSpec:
    """What an export was asked for: its id, issuer, format and CSV options, filters (as
    given, `AuditFilter.described()`), the time range read (`since`, `until`: ISO 8601
    UTC), order, and the columns written."""

    export_id: str
    issuer: str
    fmt: str
    csv_null: str
    bom: bool
    filters: Mapping[str, Any]
    time_range: Mapping[str, str | None]
    order: str
    columns: Sequence[str]


def build_manifest(
    spec: ExportSpec, chain: Any, facts: ExportFacts, now: datetime
) -> dict[str, Any]:
    """The manifest of a finished export (fields: module docstring). `chain` is the
    `audit.chain.ChainState` read when the export started; `now` is UTC."""
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "export_id": spec.export_id,
        "issuer": spec.issuer,
        "generated_at": iso(now),
        "iat": int(now.timestamp()),
        "format": spec.fmt,
        "columns": list(spec.columns),
        "filters": json.loads(json.dumps(dict(spec.filters))),  # tuples as JSON arrays
        "time_range": dict(spec.time_range),
        "order": spec.order,
        "contiguous": set(spec.filters) <= RANGE_ONLY,
        "rows": facts.rows,
        "sealed_rows": facts.sealed_rows,
        "first_seal_seq": facts.first_seal_seq,
        "last_seal_seq": facts.last_seal_seq,
        "first_prev_hash": facts.first_prev_hash,
        "last_row_hash": facts.last_row_hash,
        "first_created_at": iso(facts.first_created_at),
        "last_created_at": iso(facts.last_created_at),
        "chain": {
            "anchor_seq": chain.anchor_seq,
            "anchor_hash": chain.anchor_hash,
            "head_seq": chain.head_seq,
            "head_hash": chain.head_hash,
        },
        "bytes": facts.bytes,
        "sha256": facts.digest.hexdigest(),
    }
    if spec.fmt == "csv":
        manifest["csv_null"] = spec.csv_null
        manifest["bom"] = spec.bom
    return manifest


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_manifest(key: SigningKey, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest document `{"manifest": ..., "jws": ...}`: `jws` is the ES256 compact
    JWS (typ `audit-export+jwt`, `kid` of `key`) of the RFC 8785 bytes of `manifest`.
    Raises rfc8785.CanonicalizationError for a value RFC 8785 cannot express."""
    payload = rfc8785.dumps(dict(manifest))
    jws = PyJWS().encode(
        payload, key.private_key, algorithm=ALG, headers={"kid": key.kid, "typ": TYP}
    )
    return {"manifest": dict(manifest), "jws": jws}


def detach(jws: str) -> dict[str, str]:
    """The JWS header and signature parts (`protected`, `signature`): with the manifest
    (whose canonical bytes are the payload) they rebuild the JWS (`attach`)."""
    protected, _, signature = jws.split(".")
    return {"protected": protected, "signature": signature}


def attach(manifest: Mapping[str, Any], parts: Mapping[str, str]) -> str:
    """The compact JWS of `manifest` from its detached `protected` and `signature`."""
    payload = _b64(rfc8785.dumps(dict(manifest)))
    return f"{parts['protected']}.{payload}.{parts['signature']}"


class ManifestError(ValueError):
    """A manifest document that is not what its issuer signed: not a document, a
    signature that does not verify (`audit.signing.StatementError`'s reason), or a plain
    field that differs from the signed one. The message says which."""


def read_manifest(document: Any, keys: Mapping[str, Any]) -> dict[str, Any]:
    """The signed manifest of `document` (`{"manifest": ..., "jws": ...}`) once its JWS
    verifies under `keys` (kid → public key, `audit.signing.public_keys`) and its plain
    `manifest`, when present, equals the signed one field by field. Raises ManifestError."""
    if not isinstance(document, Mapping) or not isinstance(document.get("jws"), str):
        raise ManifestError('the manifest file is not a {"manifest": ..., "jws": ...} document')
    try:
        signed = verify_statement(document["jws"], keys, TYP)
    except StatementError as exc:
        raise ManifestError(f"the manifest does not verify: {exc}") from None
    if signed.get("version") != MANIFEST_VERSION:
        raise ManifestError(f"manifest version {signed.get('version')!r} is not {MANIFEST_VERSION}")
    plain = document.get("manifest")
    if plain is not None:
        if not isinstance(plain, Mapping):
            raise ManifestError("the plain manifest is not a JSON object")
        for name in sorted(set(plain) | set(signed)):
            if plain.get(name) != signed.get(name) or (name in plain) != (name in signed):
                raise ManifestError(
                    f"manifest field {name!r} differs from the signed manifest "
                    f"({plain.get(name)!r} here, {signed.get(name)!r} signed)"
                )
    return signed


# `details.export_id` of a row, written as `audit.query` writes its JSON expressions.
_EXPORT_ID = {
    "postgresql": "(oauth2_token_logs.details ->> 'export_id')",
    "sqlite": "json_extract(oauth2_token_logs.details, '$.export_id')",
}


def find_manifest(session: Session, action: str, export_id: str) -> dict[str, Any] | None:
    """The manifest document of export `export_id`, rebuilt from its `action`
    (`audit_exported`) row (`manifest` and detached `signature` in `details`); None when
    no finished export has that id."""
    dialect = session.get_bind().dialect.name
    details = session.scalars(
        select(TokenLog.details)
        .where(TokenLog.action == action, literal_column(_EXPORT_ID[dialect]) == export_id)
        .limit(1)
    ).first()
    if not details or "manifest" not in details or "signature" not in details:
        return None
    manifest = details["manifest"]
    return {"manifest": manifest, "jws": attach(manifest, details["signature"])}
