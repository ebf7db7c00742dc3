"""A person behind every admin change (issue #11 item 2).

- A personal admin client is registered to one named person (`person`); every audit row
  its tokens write names that person (`details.person`) and the client (`client_id`).
- The first start's admin client is flagged (`bootstrap`), its rows carry
  `details.bootstrap: true`, it cannot be given a person, and OAUTH2_ADMIN_REQUIRE_PERSON
  refuses its tokens (and every person-less admin client's) with a JSON 403.
- README "Retiring the bootstrap admin client", walked through on a fresh database.
- The command line names no person: the OS account and host, marked unauthenticated.
- `person` is bounded printable text; changing it is an audited change (before/after).
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from oauth2_server.crypto.keyring import generate_key_spec
from tests.admin_helpers import AdminAPI, assert_error, cli_json, run_cli
from tests.conftest import ROOT, Database, free_port, server_env, start_live_server, sync_url

ADA = "Ada Lovelace <ada@example.com>"
GRACE = "Grace Hopper <grace@example.com>"


def personal_admin(server: Any, db: Database, unique: Any, person: str | None) -> AdminAPI:
    """An admin client registered to `person` (None: to no one) and its token."""
    client_id, secret = db.create_client(name=unique("admin"), scope="admin", person=person)
    assert secret is not None
    return AdminAPI(server, server.client_credentials_token(client_id, secret), client_id)


def audit_rows(db: Database, sql_where: str, **params: Any) -> list[tuple[str, Any, dict]]:
    """(action, client_id, details) of the audit rows matching, oldest first."""
    rows = db.rows(
        "SELECT action, client_id, details FROM oauth2_token_logs "  # noqa: S608
        f"WHERE {sql_where} ORDER BY id",
        **params,
    )
    return [(r[0], r[1], r[2] if isinstance(r[2], dict) else json.loads(r[2])) for r in rows]


def rows_about(db: Database, client_id: str, action: str) -> list[tuple[str, Any, dict]]:
    return audit_rows(
        db, "action = :a AND CAST(details AS TEXT) LIKE :c", a=action, c=f"%{client_id}%"
    )


@pytest.fixture
def ada(server, db, unique) -> AdminAPI:
    return personal_admin(server, db, unique, ADA)


def test_a_personal_admin_clients_change_names_the_person_and_the_client(server, db, ada, unique):
    target, secret = db.create_client(name=unique("svc"), scope="read write")
    token = server.client_credentials_token(target, secret)
    changed = ada.patch(f"/clients/{target}", {"scope": "read"})
    assert changed.status_code == 200, changed.text
    ((_, actor, details),) = rows_about(db, target, "admin_client_updated")
    assert actor == ada.client_id
    assert details["person"] == ADA and "bootstrap" not in details
    assert details["before"] == {"scope": "read write"} and details["changes"] == {"scope": "read"}
    # the per-token rows of a revocation name the person too
    assert ada.patch(f"/clients/{target}", {"active": False}).json()["revoked"] == 1
    revoked = audit_rows(db, "action = 'token_revoked' AND client_id = :c", c=ada.client_id)
    assert revoked and all(d["person"] == ADA for _, _, d in revoked)
    assert token not in json.dumps([d for _, _, d in revoked])


def test_reading_the_audit_trail_names_the_person(db, ada):
    assert ada.get("/audit", params={"client_id": ada.client_id}).status_code == 200
    deadline = time.monotonic() + 10
    while not (
        reads := audit_rows(db, "action = 'audit_read' AND client_id = :c", c=ada.client_id)
    ):
        assert time.monotonic() < deadline, "no audit_read row"
        time.sleep(0.1)
    assert reads[0][2]["person"] == ADA


def test_person_is_shown_set_and_changed_with_before_and_after(db, ada, unique):
    created = ada.post("/clients", {"name": unique("grace"), "scope": "admin", "person": GRACE})
    assert created.status_code == 201, created.text
    client_id = created.json()["client_id"]
    assert created.json()["person"] == GRACE and created.json()["bootstrap"] is False
    shown = ada.get(f"/clients/{client_id}").json()
    assert (shown["person"], shown["bootstrap"]) == (GRACE, False)
    ((_, _, details),) = rows_about(db, client_id, "admin_client_created")
    assert details["target_person"] == GRACE and details["person"] == ADA
    renamed = ada.patch(f"/clients/{client_id}", {"person": "  Grace B. Hopper  "})
    assert renamed.status_code == 200 and renamed.json()["person"] == "Grace B. Hopper"
    assert ada.patch(f"/clients/{client_id}", {"person": ""}).json()["person"] is None
    updates = [d for _, _, d in rows_about(db, client_id, "admin_client_updated")]
    assert [(d["before"], d["changes"]) for d in updates] == [
        ({"person": GRACE}, {"person": "Grace B. Hopper"}),
        ({"person": "Grace B. Hopper"}, {"person": None}),
    ]
    assert all(d["person"] == ADA for d in updates)


def test_clients_list_shows_person_and_bootstrap(db, ada):
    cursor, mine = None, []
    while True:
        page = ada.get("/clients", params={"limit": 100, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        mine += [c for c in page.json()["items"] if c["client_id"] == ada.client_id]
        if not (cursor := page.json()["next_cursor"]):
            break
    assert [(c["person"], c["bootstrap"]) for c in mine] == [(ADA, False)]


@pytest.mark.parametrize(
    "person",
    ["x" * 201, "Ada\x07", "Ada\nLovelace", "Ada\u202eecalevoL", "Ada\u200b", "Ada\tL"],
)
def test_person_must_be_bounded_printable_text(db, ada, unique, person):
    name = unique("bad-person")
    response = ada.post("/clients", {"name": name, "scope": "admin", "person": person})
    assert_error(response, 400, "person")
    assert db.count("oauth2_clients", "name = :n", n=name) == 0
    patched = ada.patch(f"/clients/{ada.client_id}", {"person": person})
    assert_error(patched, 400, "person")


def test_a_person_of_200_characters_is_accepted(ada, unique):
    person = "Å" * 199 + "."
    created = ada.post("/clients", {"name": unique("long"), "person": person})
    assert created.status_code == 201 and created.json()["person"] == person


def test_an_admin_client_cannot_change_its_own_person(db, ada, server, unique):
    response = ada.patch(f"/clients/{ada.client_id}", {"person": GRACE})
    assert_error(response, 409, "person")
    other = personal_admin(server, db, unique, GRACE)
    changed = other.patch(f"/clients/{ada.client_id}", {"person": "Ada King <ada@example.com>"})
    assert changed.status_code == 200, changed.text
    assert ada.patch(f"/clients/{ada.client_id}", {"person": "Ada King <ada@example.com>"}).ok


def test_require_person_refuses_person_less_admin_tokens_with_json_403(db, start_server, unique):
    live = start_server(OAUTH2_ADMIN_REQUIRE_PERSON="true")
    nobody = personal_admin(live, db, unique, None)
    response = nobody.get("/clients")
    body = assert_error(response, 403)
    assert body["error"] == "person_required" and response.headers["cache-control"] == "no-store"
    writes = nobody.post("/clients", {"name": unique("never")})
    assert_error(writes, 403)
    assert db.count("oauth2_clients", "name LIKE :n", n="never-%") == 0
    ada = personal_admin(live, db, unique, ADA)
    assert ada.get("/clients").status_code == 200


def test_the_cli_names_the_os_account_and_host_never_a_person(db, unique):
    client_id, _ = db.create_client(name=unique("svc"), scope="admin")
    spoofed = {"LOGNAME": "mallory", "USER": "mallory", "USERNAME": "mallory"}
    changed = cli_json(db, "clients", "update", client_id, "--person", ADA, env=spoofed)
    assert changed["person"] == ADA and changed["bootstrap"] is False
    ((_, actor, details),) = rows_about(db, client_id, "admin_client_updated")
    assert actor is None and "person" not in details
    assert details["operator"] == pwd.getpwuid(os.geteuid()).pw_name != "mallory"
    assert details["host"] == socket.gethostname() and details["authenticated"] is False
    assert (details["before"], details["changes"]) == ({"person": None}, {"person": ADA})
    assert cli_json(db, "clients", "show", client_id)["person"] == ADA
    listed, cursor = [], None
    while True:
        page = cli_json(
            db, "clients", "list", "--limit", "200", *(["--cursor", cursor] * bool(cursor))
        )
        listed += [
            (c["person"], c["bootstrap"]) for c in page["items"] if c["client_id"] == client_id
        ]
        if not (cursor := page["next_cursor"]):
            break
    assert listed == [(ADA, False)]
    cleared = cli_json(db, "clients", "update", client_id, "--person", "")
    assert cleared["person"] is None


def test_cli_create_takes_a_person_and_refuses_a_bad_one(db, unique):
    created = cli_json(
        db,
        "clients",
        "create",
        "--name",
        unique("ada"),
        "--scope",
        "admin",
        "--person",
        ADA,
        "--json",
    )
    assert created["person"] == ADA
    ((_, _, details),) = rows_about(db, created["client_id"], "admin_client_created")
    assert details["target_person"] == ADA and details["via"] == "cli"
    name = unique("bad")
    bad = run_cli(db, "clients", "create", "--name", name, "--person", "x" * 201)
    assert bad.returncode == 2 and "person" in bad.stderr
    assert db.count("oauth2_clients", "name = :n", n=name) == 0


# -- the bootstrap client, on a database of its own ----------------------------------


@pytest.fixture
def fresh(database: Database, tmp_path: Path) -> Iterator[Database]:
    """An empty, migrated database of the session's backend: a new SQLite file, or a new
    PostgreSQL database beside the test database (dropped afterwards)."""
    keys = generate_key_spec("fresh-1")
    if database.backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        drop = None
    else:
        base = make_url(database.url)
        name = f"{base.database}_person"
        admin = create_engine(sync_url(database.url), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = base.set(database=name).render_as_string(hide_password=False)
        drop = (admin, name)
    engine = create_engine(sync_url(url))
    try:
        yield Database(database.backend, url, engine, keys)
    finally:
        engine.dispose()
        if drop:
            with drop[0].connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{drop[1]}" WITH (FORCE)'))
            drop[0].dispose()


def first_start(fresh: Database, tmp_path: Path) -> tuple[Any, str, str]:
    """`serve` on the empty database: the bootstrap admin it prints (server, id, secret)."""
    assert run_cli(fresh, "migrate").returncode == 0
    live = start_live_server(fresh, tmp_path, OAUTH2_BOOTSTRAP_ADMIN="true")
    output = live.log()
    return (
        live,
        output.split("client_id:")[1].split()[0],
        output.split("client_secret:")[1].split()[0],
    )


def test_bootstrap_client_is_flagged_and_retired_as_readme_says(fresh, tmp_path, unique):
    live, boot_id, boot_secret = first_start(fresh, tmp_path)
    try:
        boot = AdminAPI(live, live.client_credentials_token(boot_id, boot_secret), boot_id)
        shown = boot.get(f"/clients/{boot_id}").json()
        assert (shown["bootstrap"], shown["person"]) == (True, None)
        # README: a personal admin client for each person, from the command line
        created = cli_json(
            fresh,
            "clients",
            "create",
            "--name",
            "Ada's admin",
            "--scope",
            "admin",
            "--person",
            ADA,
            "--json",
        )
        refused = run_cli(fresh, "clients", "update", boot_id, "--person", ADA)
        assert refused.returncode == 2 and "person" in refused.stderr
        assert_error(boot.patch(f"/clients/{boot_id}", {"person": ADA}), 400, "person")
        ((_, actor, details),) = rows_about(fresh, created["client_id"], "admin_client_created")
        assert actor is None and "bootstrap" not in details  # the CLI made it
        assert boot.patch(f"/clients/{created['client_id']}", {"name": "Ada (ops)"}).ok
        ((_, actor, details),) = rows_about(fresh, created["client_id"], "admin_client_updated")
        assert actor == boot_id and details["bootstrap"] is True and details["person"] is None
    finally:
        live.stop()
    strict = start_live_server(fresh, tmp_path, OAUTH2_ADMIN_REQUIRE_PERSON="true")
    try:
        token = strict.client_credentials_token(boot_id, boot_secret)
        refused = AdminAPI(strict, token, boot_id).get("/clients")
        assert assert_error(refused, 403)["error"] == "person_required"
        ada = AdminAPI(
            strict,
            strict.client_credentials_token(created["client_id"], created["client_secret"]),
            created["client_id"],
        )
        assert ada.get("/clients").status_code == 200
        # README: retire the bootstrap client
        retired = cli_json(fresh, "clients", "update", boot_id, "--inactive")
        assert retired["active"] is False and retired["revoked"] >= 1
        assert_error(AdminAPI(strict, token, boot_id).get("/clients"), 401)
        gone = strict.post(
            "/oauth2/token",
            auth=(boot_id, boot_secret),
            data={"grant_type": "client_credentials"},
        )
        assert gone.status_code == 401
        assert cli_json(fresh, "clients", "delete", boot_id)["deleted"] is True
        assert ada.get("/clients").status_code == 200
    finally:
        strict.stop()


def test_migration_flags_the_bootstrap_client_of_an_existing_database(fresh, tmp_path):
    """Migration 0010 on a database at 0009: the client of the first start's creation row
    is flagged (even renamed), another client named "bootstrap admin" is not."""
    env = server_env(fresh.url, fresh.keys, free_port())
    alembic = [sys.executable, "-m", "alembic"]
    done = subprocess.run([*alembic, "upgrade", "0009"], cwd=ROOT, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    with fresh.engine.begin() as connection:
        for client_id, name, position in [("old-boot", "renamed", 1), ("imposter", "x", 2)]:
            connection.execute(
                text(
                    "INSERT INTO oauth2_clients (client_id, name, token_endpoint_auth_method,"
                    " grant_types, redirect_uris, scope, active, created_at, updated_at)"
                    " VALUES (:c, :n, 'client_secret_basic', '[]', '[]', 'admin', true,"
                    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"c": client_id, "n": name if position == 1 else "bootstrap admin"},
            )
        connection.execute(
            text(
                "INSERT INTO oauth2_token_logs (created_at, action, client_id, risk_score,"
                " flags, details) VALUES (CURRENT_TIMESTAMP, 'admin_client_created', NULL, 0,"
                " '[]', :d)"
            ),
            {"d": json.dumps({"target_client_id": "old-boot", "bootstrap": True, "via": "cli"})},
        )
    done = subprocess.run([*alembic, "upgrade", "head"], cwd=ROOT, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    flags = dict(fresh.rows("SELECT client_id, bootstrap FROM oauth2_clients"))
    assert flags == {"old-boot": True, "imposter": False}
    assert cli_json(fresh, "clients", "show", "old-boot")["bootstrap"] is True


def test_migration_flags_the_first_client_when_its_creation_row_is_gone(fresh):
    """Past retention (no creation row): the first client, still named "bootstrap admin"."""
    env = server_env(fresh.url, fresh.keys, free_port())
    alembic = [sys.executable, "-m", "alembic"]
    done = subprocess.run([*alembic, "upgrade", "0009"], cwd=ROOT, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    with fresh.engine.begin() as connection:
        for client_id in ("first", "second"):
            connection.execute(
                text(
                    "INSERT INTO oauth2_clients (client_id, name, token_endpoint_auth_method,"
                    " grant_types, redirect_uris, scope, active, created_at, updated_at)"
                    " VALUES (:c, :n, 'client_secret_basic', '[]', '[]', 'admin', true,"
                    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"c": client_id, "n": "bootstrap admin" if client_id == "first" else "other"},
            )
    done = subprocess.run([*alembic, "upgrade", "head"], cwd=ROOT, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    flags = dict(fresh.rows("SELECT client_id, bootstrap FROM oauth2_clients"))
    assert flags == {"first": True, "second": False}
