"""The admin operations through `oauth2-server` (no HTTP): same checks, same audit rows
(`via: cli`), errors naming the field with exit status 2."""

from __future__ import annotations

import json

from tests.admin_helpers import PASSWORD, Introspector, cli_json, run_cli


def test_cli_updates_rotates_revokes_and_deletes_a_client(server, db, unique):
    introspector = Introspector(server, db, unique)
    client_id, secret = db.create_client(name=unique("svc"), scope="read write")
    token = server.client_credentials_token(client_id, secret)
    updated = cli_json(db, "clients", "update", client_id, "--scope", "read")
    assert updated["scope"] == "read" and "secret_hash" not in updated
    rotated = cli_json(db, "clients", "rotate-secret", client_id)
    assert rotated["client_secret"] and rotated["client_secret"] != secret
    assert cli_json(db, "tokens", "revoke", "--client-id", client_id)["revoked"] == 1
    assert not introspector.active(token)
    assert cli_json(db, "clients", "delete", client_id)["deleted"] is True
    rows = db.rows(
        "SELECT action, client_id, details FROM oauth2_token_logs WHERE action LIKE "
        "'admin%' AND CAST(details AS TEXT) LIKE :c ORDER BY id",
        c=f"%{client_id}%",
    )
    details = [json.loads(r[2]) if isinstance(r[2], str) else r[2] for r in rows]
    assert [r[0] for r in rows] == [
        "admin_client_updated",
        "admin_client_secret_rotated",
        "admin_tokens_revoked",
        "admin_client_deleted",
    ]
    assert all(r[1] is None for r in rows) and all(
        d["via"] == "cli" and d["operator"] for d in details
    )


def test_cli_deactivates_a_user_and_reports_bad_input(db, unique):
    user = db.create_user(unique("cli-user"), PASSWORD)
    assert cli_json(db, "users", "deactivate", user.subject)["active"] is False
    missing = run_cli(db, "users", "show", "no-such-subject")
    assert missing.returncode == 3 and "subject" in missing.stderr  # not found
    bad = run_cli(
        db, "clients", "update", "no-such-client", "--redirect-uri", "http://evil.example/cb"
    )
    assert bad.returncode == 3 and "client_id" in bad.stderr  # not found
