"""Who read or exported the audit trail, and who ran the command line (issue #11 items 1
and 2, in part).

- Every page read of the audit trail (GET /admin/audit, `audit query`) writes an
  `audit_read` row, committed with the read: who, which filters, how many rows.
- `audit export` writes `audit_export_started` before the first row and `audit_exported`
  (with the row count) after the last.
- Command-line rows name the OS account the process runs as, never `LOGNAME`/`USER`, and
  its host, marked `"authenticated": false` (the server cannot authenticate an operator).
"""

from __future__ import annotations

import json
import os
import pwd
import socket
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from tests.admin_helpers import admin_api, event, insert_log_rows, run_cli

BASE = datetime(2033, 1, 5, tzinfo=UTC)
# The environment a dishonest operator would set to be recorded as someone else.
SPOOFED = {"LOGNAME": "mallory", "USER": "mallory", "USERNAME": "mallory"}


def _rows(db, action: str, marker: str) -> list[tuple[str | None, dict]]:
    """(client_id, details) of the `action` rows whose details mention `marker`."""
    with db.engine.connect() as connection:
        found = connection.execute(
            text("SELECT client_id, details FROM oauth2_token_logs WHERE action = :action"),
            {"action": action},
        ).all()
    rows = []
    for client_id, details in found:
        parsed = details if isinstance(details, dict) else json.loads(details)
        if marker in json.dumps(parsed):
            rows.append((client_id, parsed))
    return rows


def _cli_operator_is_the_real_account(details: dict) -> None:
    assert details["via"] == "cli"
    assert details["operator"] == pwd.getpwuid(os.geteuid()).pw_name != "mallory"
    assert details["host"] == socket.gethostname()
    assert details["authenticated"] is False


def test_an_api_read_of_the_audit_trail_is_itself_a_row(server, db, unique) -> None:
    admin = admin_api(server, db, unique)
    client = unique("read-by-api")
    insert_log_rows(
        db, [event("issued", BASE + timedelta(seconds=n), client_id=client) for n in range(3)]
    )
    page = admin.get("/audit", params={"client_id": client, "limit": "2"})
    assert page.status_code == 200, page.text
    assert len(page.json()["items"]) == 2
    ((client_id, details),) = _rows(db, "audit_read", client)
    assert client_id == admin.client_id
    assert details["via"] == "api" and details["admin_jti"]
    assert details["filters"] == {"client_id": client} and details["rows"] == 2


def test_a_cli_query_is_a_row_naming_the_real_os_account(db, unique) -> None:
    client = unique("read-by-cli")
    insert_log_rows(db, [event("issued", BASE, client_id=client)])
    result = run_cli(
        db, "audit", "query", "--client-id", client, "--since", "2033-01-01", env=SPOOFED
    )
    assert result.returncode == 0, result.stderr
    ((client_id, details),) = _rows(db, "audit_read", client)
    assert client_id is None
    assert details["filters"] == {"client_id": client, "since": "2033-01-01T00:00:00+00:00"}
    assert details["rows"] == 1
    _cli_operator_is_the_real_account(details)


def test_an_export_is_recorded_before_and_after(db, unique, tmp_path) -> None:
    client = unique("exported")
    insert_log_rows(
        db, [event("issued", BASE + timedelta(seconds=n), client_id=client) for n in range(4)]
    )
    target = tmp_path / "evidence.jsonl"
    result = run_cli(
        db,
        "audit",
        "export",
        "--format",
        "jsonl",
        "--client-id",
        client,
        "--output",
        str(target),
        env=SPOOFED,
    )
    assert result.returncode == 0, result.stderr
    ((_, started),) = _rows(db, "audit_export_started", client)
    ((_, done),) = _rows(db, "audit_exported", client)
    for details in (started, done):
        assert details["filters"] == {"client_id": client}
        assert details["format"] == "jsonl" and details["output"] == "evidence.jsonl"
        _cli_operator_is_the_real_account(details)
    assert "rows" not in started and done["rows"] == 4


def test_a_cli_change_names_the_real_os_account_and_host(db, unique) -> None:
    name = unique("cli-made")
    result = run_cli(
        db,
        "clients",
        "create",
        "--name",
        name,
        "--grant-type",
        "client_credentials",
        "--json",
        env=SPOOFED,
    )
    assert result.returncode == 0, result.stderr
    client_id = json.loads(result.stdout)["client_id"]
    ((_, details),) = _rows(db, "admin_client_created", client_id)
    _cli_operator_is_the_real_account(details)
