"""Exports an auditor can hand over (issue #11 item 6): GET /admin/audit/export besides
the CLI, a signed manifest for every export, and `audit verify-export` checking an
export offline (no database, no server) against the issuer's JWKS.

- The API export holds exactly the rows a direct SQL count finds, byte for byte what
  the CLI exports with the same filters; it needs scope `admin` (JSON 401/403/400) and is
  recorded (`audit_export_started`, `audit_exported` naming the admin and the rows).
- `verify-export` passes on a fresh export (CSV and JSON Lines) and fails, naming the
  first bad line, on one changed byte of a row, a deleted line, a changed manifest field,
  a manifest signed by another key, and bytes changed outside any row's hash.
- CSV keeps NULL apart from an empty string, and from texts that look like the marker
  or a formula, so a sealed row's hash is recomputed from the CSV alone.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.api_jws import PyJWS

from tests.admin_helpers import (
    _sealed,
    _with_sessions,
    admin_api,
    assert_error,
    event,
    execute,
    insert_log_rows,
    run_cli,
)

pytestmark = pytest.mark.usefixtures("db")
SEAL_MARGIN = 1.5  # seconds


def _now_rows(db: Any, client: str, count: int, **fields: Any) -> list[int]:
    """`count` rows of `client`, dated now (never in the past: sealing runs here)."""
    now = datetime.now(UTC)
    rows = [
        event("issued", now + timedelta(microseconds=n), client_id=client, **fields)
        for n in range(count)
    ]
    return insert_log_rows(db, rows)


def _sealed_rows(db: Any, client: str, values: list[dict[str, Any]]) -> None:
    """Insert rows of `client` now, one per `values` entry, and seal them."""
    now = datetime.now(UTC)
    rows = [
        event("issued", now + timedelta(microseconds=n), client_id=client, **value)
        for n, value in enumerate(values)
    ]
    insert_log_rows(db, rows)
    # seal behind a 1.5 s horizon (the server's batched rows, restamped after 1 s, are
    # in by then: no straggler is left for later tests), once these rows are behind it
    time.sleep(SEAL_MARGIN + 0.3)
    asyncio.run(_with_sessions(db, lambda s: _sealed(s, 0, margin=SEAL_MARGIN)))
    assert db.count("oauth2_token_logs", "client_id = :c AND seal_seq IS NULL", c=client) == 0


def _api_export(admin: Any, target: Path, **params: str) -> tuple[requests.Response, Path]:
    """Stream GET /admin/audit/export to `target`; save its manifest beside it."""
    response = admin.get("/audit/export", params=params, stream=True)
    assert response.status_code == 200, response.text
    with target.open("wb") as out:
        for chunk in response.iter_content(65536):
            out.write(chunk)
    export_id = response.headers["x-audit-export-id"]
    manifest = admin.get(f"/audit/exports/{export_id}/manifest")
    assert manifest.status_code == 200, manifest.text
    Path(str(target) + ".manifest.json").write_text(manifest.text)
    return response, target


def _jwks(server: Any, tmp_path: Path, db: Any = None) -> Path:
    """The issuer's JWKS as an auditor saves it. Other tests on this database may have
    just rotated the signing key (`keys rotate`); the server publishes a rotated key
    within its reload interval (60 s), so wait until it publishes the current one."""
    path = tmp_path / "jwks.json"
    jwks_uri = server.get("/.well-known/oauth-authorization-server").json()["jwks_uri"]
    current = (
        db.scalar("SELECT kid FROM oauth2_signing_keys WHERE status = 'current'")
        if db is not None
        else None
    )
    deadline = time.monotonic() + 75
    while True:
        text = requests.get(jwks_uri, timeout=30).text
        kids = {key.get("kid") for key in json.loads(text)["keys"]}
        if current is None or current in kids or time.monotonic() > deadline:
            break
        time.sleep(1)
    path.write_text(text)
    return path


def _verify(db: Any, target: Path, jwks: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    result = run_cli(db, "audit", "verify-export", str(target), "--jwks", str(jwks), *extra)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def _copy(source: Path, name: str, data: bytes | None = None) -> Path:
    """A copy of an export (with `data` instead of its bytes) and of its manifest."""
    target = source.with_name(name)
    target.write_bytes(source.read_bytes() if data is None else data)
    manifest = Path(str(source) + ".manifest.json").read_text()
    Path(str(target) + ".manifest.json").write_text(manifest)
    return target


@pytest.fixture
def exported(server, db, unique, tmp_path) -> dict[str, Any]:
    """A JSON Lines API export of a time range holding 6 sealed rows of one client and
    nothing else (nothing else is written meanwhile): a contiguous export, every line
    sealed and linked to the one before; and the issuer's JWKS."""
    admin = admin_api(server, db, unique)
    client = unique("signed")
    since = datetime.now(UTC).isoformat()
    _sealed_rows(db, client, [{"subject": f"user-{n}"} for n in range(6)])
    until = datetime.now(UTC).isoformat()
    target = tmp_path / "audit.jsonl"
    _api_export(admin, target, format="jsonl", since=since, until=until)
    jwks = _jwks(server, tmp_path, db)
    return {"admin": admin, "target": target, "jwks": jwks, "since": since, "until": until}


def test_api_export_equals_sql_count_and_the_cli_export(server, db, unique, tmp_path) -> None:
    admin = admin_api(server, db, unique)
    client = unique("api-export")
    _now_rows(db, client, 7, subject="alice")
    until = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    response, target = _api_export(
        admin, tmp_path / "api.jsonl", format="jsonl", client_id=client, until=until
    )
    assert response.headers["content-type"].startswith("application/jsonl")
    assert response.headers["transfer-encoding"] == "chunked"  # streamed, not buffered
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(lines) == db.count("oauth2_token_logs", "client_id = :c", c=client) == 7
    cli = tmp_path / "cli.jsonl"
    result = run_cli(
        db, "audit", "export", "--format", "jsonl", "--client-id", client, "--until", until,
        "--output", str(cli),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # the same rows (chain columns aside: the server's janitor may seal them in between)
    assert _content(cli) == _content(target)
    manifest = json.loads(Path(str(target) + ".manifest.json").read_text())["manifest"]
    assert manifest["rows"] == 7 and manifest["filters"]["client_id"] == client
    assert manifest["contiguous"] is False and manifest["format"] == "jsonl"
    export_id = response.headers["x-audit-export-id"]
    rows = db.rows(
        "SELECT action, client_id, details FROM oauth2_token_logs "
        "WHERE action IN ('audit_export_started', 'audit_exported') ORDER BY id"
    )
    mine = [row for row in rows if _details(row.details).get("export_id") == export_id]
    assert [row.action for row in mine] == ["audit_export_started", "audit_exported"]
    done = _details(mine[1].details)
    assert mine[1].client_id == admin.client_id and done["via"] == "api" and done["rows"] == 7
    assert done["filters"]["client_id"] == client


def _content(path: Path) -> list[dict[str, Any]]:
    chain = ("seal_seq", "prev_hash", "row_hash")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in chain} for row in rows]


def _details(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else value


def test_export_needs_scope_admin_and_valid_parameters(server, db, unique) -> None:
    url = server.url("/admin/audit/export")
    assert_error(requests.get(url, params={"format": "csv"}, timeout=30), 401)
    client_id, secret = db.create_client(name=unique("reader"), scope="read")
    token = server.client_credentials_token(client_id, secret)
    headers = {"Authorization": f"Bearer {token}"}
    assert_error(requests.get(url, params={"format": "csv"}, headers=headers, timeout=30), 403)
    admin = admin_api(server, db, unique)
    assert_error(admin.get("/audit/export"), 400, "format")
    assert_error(admin.get("/audit/export", params={"format": "xml"}), 400, "format")
    assert_error(
        admin.get("/audit/export", params={"format": "csv", "csv_null": "1"}), 400, "csv_null"
    )
    assert_error(admin.get("/audit/export", params={"format": "csv", "bom": "yes"}), 400, "bom")
    assert_error(admin.get("/audit/export", params={"format": "csv", "nope": "1"}), 400, "nope")
    assert_error(admin.get("/audit/exports/" + "0" * 32 + "/manifest"), 404, "export_id")
    assert_error(admin.get("/audit/exports/not-an-id/manifest"), 404, "export_id")


def test_verify_export_passes_on_a_fresh_export(db, exported) -> None:
    code, report = _verify(db, exported["target"], exported["jwks"])
    assert code == 0, report
    assert report["rows"] == report["sealed_rows"] == 6
    assert report["last_seal_seq"] == report["first_seal_seq"] + 5


def test_one_changed_byte_of_a_row_names_its_line(db, exported) -> None:
    source = exported["target"]
    lines = source.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"user-2"', b'"user-X"')
    target = _copy(source, "changed.jsonl", b"".join(lines))
    code, report = _verify(db, target, exported["jwks"])
    assert code == 1
    assert (
        report["problem"].startswith("line 3 ")
        and "does not match its row_hash" in report["problem"]
    )


def test_a_deleted_line_names_the_line_after_it(db, exported) -> None:
    source = exported["target"]
    lines = source.read_bytes().splitlines(keepends=True)
    target = _copy(source, "deleted.jsonl", b"".join(lines[:3] + lines[4:]))
    code, report = _verify(db, target, exported["jwks"])
    assert code == 1
    assert report["problem"].startswith("line 4 ") and "are missing" in report["problem"]
    assert any("SHA-256" in problem for problem in report["problems"])


def test_bytes_changed_outside_every_row_hash_fail_the_sha256(db, exported) -> None:
    """A JSON Lines file re-serialized (same rows, other bytes): only the SHA-256 says so."""
    source = exported["target"]
    data = source.read_bytes().replace(b'"action":', b'"action": ', 1)
    code, report = _verify(db, _copy(source, "spaced.jsonl", data), exported["jwks"])
    assert code == 1
    assert "SHA-256" in report["problem"] and len(report["problems"]) == 1


def test_a_changed_manifest_field_fails(db, exported) -> None:
    source = exported["target"]
    target = _copy(source, "field.jsonl")
    manifest_path = Path(str(target) + ".manifest.json")
    document = json.loads(manifest_path.read_text())
    document["manifest"]["first_seal_seq"] += 1
    manifest_path.write_text(json.dumps(document))
    code, report = _verify(db, target, exported["jwks"])
    assert code == 1 and "'first_seal_seq' differs from the signed manifest" in report["problem"]
    # the signed payload itself changed: its signature no longer verifies
    header, payload, signature = document["jws"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["rows"] += 1
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    manifest_path.write_text(json.dumps({"jws": f"{header}.{forged}.{signature}"}))
    code, report = _verify(db, target, exported["jwks"])
    assert code == 1 and "signature does not verify" in report["problem"]


def test_a_manifest_signed_by_another_key_fails(db, exported) -> None:
    source = exported["target"]
    target = _copy(source, "forged.jsonl")
    manifest_path = Path(str(target) + ".manifest.json")
    document = json.loads(manifest_path.read_text())
    kid = json.loads(base64.urlsafe_b64decode(document["jws"].split(".")[0] + "=="))["kid"]
    payload = json.dumps(document["manifest"]).encode()
    other = ec.generate_private_key(ec.SECP256R1())
    headers = {"kid": kid, "typ": "audit-export+jwt"}
    document["jws"] = PyJWS().encode(payload, other, algorithm="ES256", headers=headers)
    manifest_path.write_text(json.dumps(document))
    code, report = _verify(db, target, exported["jwks"])
    assert code == 1 and "signature does not verify" in report["problem"]


def test_csv_round_trips_null_empty_and_escaped_text_through_the_hashes(
    server, db, unique, tmp_path
) -> None:
    """Sealed rows whose subject is NULL, empty, the NULL marker, a formula or starts with
    a quote: the CLI's CSV (with a BOM) verifies, so each cell decodes to the hashed value."""
    client = unique("csv-hash")
    subjects = [None, "", "\\N", "=1+1", "'quoted", "''", "zoë"]
    _sealed_rows(
        db, client, [{"subject": s, "grant_type": "-x", "details": {"k": ""}} for s in subjects]
    )
    target = tmp_path / "audit.csv"
    result = run_cli(
        db, "audit", "export", "--format", "csv", "--bom", "--client-id", client,
        "--output", str(target),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    code, report = _verify(db, target, _jwks(server, tmp_path, db))
    assert code == 0, report
    assert report["rows"] == report["sealed_rows"] == len(subjects)
    text = target.read_bytes()
    assert text.startswith(b"\xef\xbb\xbfid,")
    cells = [line.split(b",")[4] for line in text.splitlines()[1:]]
    assert cells == [b"\\N", b"", b"'\\N", b"'=1+1", b"''quoted", b"'''", "zoë".encode()]


def test_cli_writes_the_signed_manifest_beside_the_export(server, db, unique, tmp_path) -> None:
    client = unique("cli-manifest")
    _now_rows(db, client, 3)
    target = tmp_path / "audit.jsonl"
    result = run_cli(
        db, "audit", "export", "--format", "jsonl", "--client-id", client, "--output", str(target)
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stderr.strip().splitlines()[-1])
    assert summary["rows"] == 3 and summary["manifest"] == str(target) + ".manifest.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "audit.jsonl",
        "audit.jsonl.manifest.json",
    ]
    code, report = _verify(db, target, _jwks(server, tmp_path, db))
    assert code == 0, report
    assert report["export_id"] == summary["export_id"] and report["rows"] == 3
    # the manifest is also kept in the export's audit row, served by the admin API
    admin = admin_api(server, db, unique)
    served = admin.get(f"/audit/exports/{summary['export_id']}/manifest")
    assert served.status_code == 200, served.text
    assert served.json() == json.loads(Path(summary["manifest"]).read_text())


def test_verify_export_without_jwks_or_with_a_missing_manifest_fails(db, exported) -> None:
    result = run_cli(db, "audit", "verify-export", str(exported["target"]))
    assert result.returncode == 1 and "--jwks" in json.loads(result.stdout)["problem"]
    bare = exported["target"].with_name("bare.jsonl")
    bare.write_bytes(exported["target"].read_bytes())
    result = run_cli(db, "audit", "verify-export", str(bare), "--jwks", str(exported["jwks"]))
    assert result.returncode == 2 and "--manifest" in result.stderr


def test_a_descending_export_verifies(db, exported, tmp_path) -> None:
    target = tmp_path / "desc.jsonl"
    range_ = {"since": exported["since"], "until": exported["until"]}
    _api_export(exported["admin"], target, format="jsonl", order="desc", **range_)
    code, report = _verify(db, target, exported["jwks"])
    assert code == 0, report
    assert report["first_seal_seq"] == report["last_seal_seq"] + 5


def test_a_row_altered_in_the_database_is_caught_though_the_export_is_signed(
    db, exported, tmp_path
) -> None:
    """The server signs what it reads: a row altered in the database before the export
    verifies by SHA-256 and signature, and is caught by its recomputed row_hash."""
    rows = [json.loads(line) for line in exported["target"].read_text().splitlines()]
    victim = rows[3]
    sql = "UPDATE oauth2_token_logs SET subject = :s WHERE id = :i"
    execute(db, sql, s="mallory", i=victim["id"])
    try:
        target = tmp_path / "tampered.jsonl"
        range_ = {"since": exported["since"], "until": exported["until"]}
        _api_export(exported["admin"], target, format="jsonl", **range_)
    finally:
        execute(db, sql, s=victim["subject"], i=victim["id"])  # the chain verifies again
    code, report = _verify(db, target, exported["jwks"])
    assert code == 1 and report["problems"] == [report["problem"]]  # SHA-256 and rows hold
    assert report["problem"].startswith(f"line 4 (row id {victim['id']}, ")
    assert "does not match its row_hash" in report["problem"]
