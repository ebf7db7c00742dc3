"""The `oauth2-server` command: clients and users are created once, secrets shown once,
bad input exits 2 with a message naming the problem and changes nothing; not found exits
3, a conflict 4 (README "Exit statuses"); commands that print data take --json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from oauth2_server.storage.clients import new_client_id
from tests.conftest import free_port, server_env


def cli(db, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = server_env(db.url, db.keys, free_port())
    return subprocess.run(
        [sys.executable, "-m", "oauth2_server", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def create_client(db, *args: str) -> dict:
    """`clients create ARGS --json`, which must succeed: the printed registration."""
    result = cli(db, "clients", "create", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_clients_create_prints_secret_once_and_client_works(server, db, unique):
    created = create_client(
        db, "--name", unique("svc"), "--grant-type", "client_credentials", "--scope", "read write"
    )
    assert created["grant_types"] == ["client_credentials"]
    assert created["scope"] == "read write"
    assert created["token_endpoint_auth_method"] == "client_secret_basic"
    token = server.post(
        "/oauth2/token",
        auth=(created["client_id"], created["client_secret"]),
        data={"grant_type": "client_credentials", "scope": "write"},
    )
    assert token.status_code == 200 and token.json()["scope"] == "write"
    stored = db.scalar(
        "SELECT secret_hash FROM oauth2_clients WHERE client_id = :c", c=created["client_id"]
    )
    assert stored.startswith("sha256$") and created["client_secret"] not in stored
    # The registration is audited in its own transaction, like the admin API's (no secret).
    (row,) = db.rows(
        "SELECT client_id, details FROM oauth2_token_logs"
        " WHERE action = 'admin_client_created' AND CAST(details AS TEXT) LIKE :c",
        c=f'%"{created["client_id"]}"%',
    )
    assert row[0] is None
    details = json.loads(row[1]) if isinstance(row[1], str) else row[1]
    assert details["target_client_id"] == created["client_id"] and details["via"] == "cli"
    assert details["scope"] == "read write" and details["operator"]
    assert created["client_secret"] not in json.dumps(details)


def test_public_client_has_no_secret(db, unique):
    created = create_client(
        db,
        *("--name", unique("spa"), "--public"),
        *("--grant-type", "authorization_code,refresh_token"),
        *("--redirect-uri", "http://127.0.0.1:7000/cb"),
    )
    assert created["client_secret"] is None
    assert created["token_endpoint_auth_method"] == "none"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        pytest.param(
            ["--grant-type", "authorization_code", "--redirect-uri", "http://app.example.com/cb"],
            "https",
            id="http-redirect-uri",
        ),
        pytest.param(
            ["--grant-type", "authorization_code", "--redirect-uri", "https://a.example/cb#x"],
            "fragment",
            id="redirect-uri-with-fragment",
        ),
        pytest.param(["--grant-type", "authorization_code"], "redirect_uri", id="no-redirect-uri"),
        pytest.param(["--grant-type", "password"], "password", id="password-grant"),
        pytest.param(
            ["--public", "--grant-type", "client_credentials"],
            "client_credentials",
            id="public-client-credentials",
        ),
    ],
)
def test_invalid_client_registration_exits_2_and_changes_nothing(db, unique, args, named):
    before = db.count("oauth2_clients")
    audited = db.count("oauth2_token_logs", "action = 'admin_client_created'")
    result = cli(db, "clients", "create", "--name", unique("bad"), *args)
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    assert named in result.stderr
    assert db.count("oauth2_clients") == before
    assert db.count("oauth2_token_logs", "action = 'admin_client_created'") == audited


def test_users_create_reads_password_from_stdin_and_refuses_duplicates(db, unique):
    username = unique("henry")
    result = cli(
        db, "users", "create", "--username", username, "--json", stdin="a long enough passphrase\n"
    )
    assert result.returncode == 0, result.stderr
    subject = json.loads(result.stdout)["subject"]
    assert json.loads(result.stdout)["username"] == username
    assert (
        db.count("oauth2_token_logs", "action = 'admin_user_created' AND subject = :s", s=subject)
        == 1
    )
    again = cli(db, "users", "create", "--username", username, stdin="another passphrase\n")
    assert again.returncode == 4 and "taken" in again.stderr  # conflict
    short = cli(db, "users", "create", "--username", unique("ivy"), stdin="short\n")
    assert short.returncode == 2 and "8 characters" in short.stderr
    assert db.count("oauth2_users", "username = :u", u=username) == 1
    assert (
        db.count("oauth2_token_logs", "action = 'admin_user_created' AND subject = :s", s=subject)
        == 1
    )


def test_migrate_is_idempotent(db):
    first = cli(db, "migrate")
    second = cli(db, "migrate")
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert first.stdout == second.stdout and "revision" in first.stdout


def test_generated_client_ids_can_follow_a_command_line_option():
    """RFC 6749 §2.2 identifiers, 128 random bits, never starting with `-` or `_`: an id
    such as `-Xq…` after `--client` would be read by the CLI as an option (this failed
    `branches grant` about once in 64 client registrations)."""
    ids = [new_client_id() for _ in range(5000)]
    assert all(client_id[0].isalnum() for client_id in ids)
    assert len(set(ids)) == len(ids) and {len(client_id) for client_id in ids} == {22}


def test_exit_statuses_tell_not_found_conflict_and_bad_input_apart(db, unique):
    """README "Exit statuses": 2 usage or bad input, 3 not found, 4 conflict; one line."""
    missing = cli(db, "users", "show", unique("nobody"))
    assert missing.returncode == 3 and "not found" in missing.stderr
    last = missing.stderr.strip().splitlines()[-1]  # test servers log at DEBUG
    assert last.startswith("oauth2-server: subject:") and "Traceback" not in missing.stderr
    assert cli(db, "clients", "delete", unique("no-client")).returncode == 3
    assert cli(db, "branches", "grant", unique("no-branch"), "--client", "x").returncode == 3
    username = unique("taken")
    first = cli(db, "users", "create", "--username", username, stdin="a long passphrase\n")
    assert first.returncode == 0, first.stderr
    again = cli(db, "users", "create", "--username", username, stdin="a long passphrase\n")
    assert again.returncode == 4 and "taken" in again.stderr
    branch = unique("b")
    assert cli(db, "branches", "create", branch, "--name", "B").returncode == 0
    assert cli(db, "branches", "create", branch, "--name", "B").returncode == 4
    bad = cli(db, "clients", "create", "--name", unique("bad"), "--grant-type", "password")
    assert bad.returncode == 2
    usage = cli(db, "clients", "create")  # argparse: --name is required
    assert usage.returncode == 2 and "--name" in usage.stderr


def test_commands_that_print_data_take_json(db):
    migrated = cli(db, "migrate", "--json")
    assert migrated.returncode == 0, migrated.stderr
    assert json.loads(migrated.stdout)["revision"]
    listed = cli(db, "clients", "list", "--json", "--limit", "1")
    assert listed.returncode == 0 and "items" in json.loads(listed.stdout), listed.stderr
