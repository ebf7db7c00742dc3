"""Audit exports an auditor can hand over (issue #11 item 6, in part) and header text
stored as it was sent (issue #11 item 8).

- `audit export --output FILE` writes a hidden partial file beside FILE and renames it
  only once complete, then FILE.manifest.json the same way: a killed export leaves
  nothing at either path.
- CSV marks NULL (`\\N` by default) apart from an empty string; `--bom` starts the file
  with a UTF-8 byte-order mark.
- The user agent is decoded as UTF-8 (RFC 9110 §5.5: field values are octets; Latin-1 is
  only how Starlette hands them over), invalid bytes as U+FFFD.
"""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import requests

from tests.admin_helpers import admin_api, event, insert_log_rows, run_cli
from tests.conftest import ROOT, free_port, server_env

BASE = datetime(2032, 5, 1, tzinfo=UTC)
# Rows dated BASE are never sealed (no seal reaches the future); an export's open `until`
# is bounded to now, so these exports name one past BASE.
UNTIL = "2033-01-01"


def _export(db, client: str, target, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        db, "audit", "export", "--client-id", client, "--until", UNTIL, "--output", str(target),
        *extra,
    )  # fmt: skip


def test_csv_tells_null_from_an_empty_string(db, unique, tmp_path) -> None:
    client = unique("null")
    insert_log_rows(
        db,
        [
            event("issued", BASE, client_id=client, subject="", token_id=None),
            event("issued", BASE + timedelta(seconds=1), client_id=client, subject="\\N"),
        ],
    )
    target = tmp_path / "out.csv"
    result = _export(db, client, target, "--format", "csv")
    assert result.returncode == 0, result.stderr
    empty, marker = csv.DictReader(io.StringIO(target.read_text(encoding="utf-8")))
    assert empty["subject"] == "" and empty["token_id"] == "\\N"
    assert marker["subject"] == "'\\N"  # a value equal to the marker is escaped
    other = tmp_path / "other.csv"
    assert _export(db, client, other, "--format", "csv", "--csv-null", "NULL").returncode == 0
    assert next(csv.DictReader(io.StringIO(other.read_text())))["token_id"] == "NULL"


def test_bom_only_when_asked(db, unique, tmp_path) -> None:
    client = unique("bom")
    insert_log_rows(db, [event("issued", BASE, client_id=client, subject="zoë")])
    plain, marked = tmp_path / "plain.csv", tmp_path / "marked.csv"
    assert _export(db, client, plain, "--format", "csv").returncode == 0
    assert _export(db, client, marked, "--format", "csv", "--bom").returncode == 0
    assert plain.read_bytes().startswith(b"id,")
    assert marked.read_bytes().startswith(b"\xef\xbb\xbfid,")
    row = next(csv.DictReader(io.StringIO(marked.read_text(encoding="utf-8-sig"))))
    assert row["subject"] == "zoë"


def test_a_killed_export_leaves_nothing_at_the_final_path(db, unique, tmp_path) -> None:
    client = unique("killed")
    rows = [
        event("issued", BASE + timedelta(milliseconds=n), client_id=client) for n in range(2000)
    ]
    insert_log_rows(db, rows)
    target = tmp_path / "audit.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "oauth2_server", "audit", "export", "--format", "jsonl"]
        + ["--client-id", client, "--until", UNTIL, "--output", str(target)]
        + ["--batch-size", "1"],
        env=server_env(db.url, db.keys, free_port()),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        partial = []
        while time.monotonic() < deadline and process.poll() is None:
            partial = [p for p in tmp_path.iterdir() if p.name.startswith(".audit.jsonl.partial")]
            if partial and partial[0].stat().st_size > 0:
                break
            time.sleep(0.02)
        assert partial and process.poll() is None, "the export finished before it was killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert not target.exists()
    assert not target.with_name("audit.jsonl.manifest.json").exists()
    written = partial[0].read_text().splitlines()
    assert 0 < len(written) < 2000  # it was killed mid-way, and that file is not the export
    assert partial[0].name.startswith(".")  # hidden beside the final path


def test_a_complete_export_is_renamed_into_place(db, unique, tmp_path) -> None:
    client = unique("renamed")
    insert_log_rows(
        db, [event("issued", BASE + timedelta(seconds=n), client_id=client) for n in range(5)]
    )
    target = tmp_path / "audit.jsonl"
    target.write_text("an older export\n")
    result = _export(db, client, target, "--format", "jsonl", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stderr.strip().splitlines()[-1])
    assert summary["rows"] == 5 and summary["output"] == str(target)
    assert len(target.read_text().splitlines()) == 5
    # no partial file left; the signed manifest beside the export
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "audit.jsonl",
        "audit.jsonl.manifest.json",
    ]


def test_a_failed_export_leaves_the_previous_file_alone(db, unique, tmp_path) -> None:
    target = tmp_path / "audit.csv"
    target.write_text("kept\n")
    result = run_cli(
        db, "audit", "export", "--format", "csv", "--since", "not-a-date", "--output", str(target)
    )
    assert result.returncode == 2, result.stderr
    assert target.read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.csv"]


def test_user_agent_is_stored_as_the_utf8_it_was_sent_as(server, db, unique) -> None:
    """RFC 9110 §5.5: the header's octets are decoded as UTF-8; invalid ones become
    U+FFFD instead of Latin-1 mojibake."""
    admin = admin_api(server, db, unique)
    client_id, secret = db.create_client(name=unique("ua"))
    agents = {
        "valid": ("Zoë-Agent/1.0 ✓".encode(), "Zoë-Agent/1.0 ✓"),
        "invalid": (b"bad-\xff\xfe-agent", "bad-\ufffd\ufffd-agent"),
    }
    for raw, _ in agents.values():
        response = requests.post(
            server.base_url + "/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(client_id, secret),
            headers={"User-Agent": raw},
            timeout=30,
        )
        assert response.status_code == 200, response.text
    # the audit row commits with the token, before the answer (DESIGN.md invariant 6)
    page = admin.get("/audit", params={"client_id": client_id, "action": "issued"})
    assert page.status_code == 200, page.text
    stored = [item["user_agent"] for item in page.json()["items"]]
    assert sorted(stored) == sorted(expected for _, expected in agents.values())


def test_request_id_is_kept_only_when_printable_ascii(server) -> None:
    """X-Request-ID is echoed in a response header and stored in the audit trail: a
    caller's id is kept only as printable ASCII (≤ 64), else a new one is made."""
    kept = requests.get(
        server.base_url + "/healthz", headers={"X-Request-ID": "trace-42"}, timeout=30
    )
    assert kept.headers["x-request-id"] == "trace-42"
    for presented in ("zoë-42".encode(), b"bad-\xff"):
        made = requests.get(
            server.base_url + "/healthz", headers={"X-Request-ID": presented}, timeout=30
        )
        answered = made.headers["x-request-id"]
        assert (
            answered.isascii() and len(answered) == 32 and answered != presented.decode("latin-1")
        )
