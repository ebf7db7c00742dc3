"""Every admin change records the old and the new value of each field it changed (issue
#11 item 3): `details.before` beside `details.changes`, through the admin API and the
command line alike (one service, `registry/`). Never a secret or a hash."""

from __future__ import annotations

import json

from tests.admin_helpers import admin_api, run_cli


def _details(admin, **params) -> list[dict]:
    page = admin.get("/audit", params={"limit": "1000", **params})
    assert page.status_code == 200, page.text
    return [item["details"] for item in page.json()["items"]]


def test_a_client_change_records_before_and_after(server, db, unique) -> None:
    admin = admin_api(server, db, unique)
    old_name, new_name, branch = unique("before"), unique("after"), unique("b")
    assert admin.post("/branches", {"branch_id": branch, "name": "Oslo"}).status_code == 201
    created = admin.post(
        "/clients",
        {"name": old_name, "grant_types": ["client_credentials"], "scope": "read"},
    )
    assert created.status_code == 201, created.text
    client_id = created.json()["client_id"]
    changed = admin.patch(
        f"/clients/{client_id}",
        {"name": new_name, "scope": "read write", "branches": [branch]},
    )
    assert changed.status_code == 200, changed.text
    (details,) = _details(admin, target_client_id=client_id, action="admin_client_updated")
    assert details["before"] == {"name": old_name, "scope": "read", "branches": []}
    assert details["changes"] == {"name": new_name, "scope": "read write", "branches": [branch]}
    rows = json.dumps(_details(admin, target_client_id=client_id))
    assert created.json()["client_secret"] not in rows and "sha256$" not in rows


def test_a_user_change_from_the_cli_records_before_and_after(server, db, unique) -> None:
    admin = admin_api(server, db, unique)
    user = db.create_user(unique("olduser"))
    renamed = unique("newuser")
    result = run_cli(
        db, "users", "update", user.subject, "--username", renamed, "--inactive", "--json"
    )
    assert result.returncode == 0, result.stderr
    (details,) = _details(admin, subject=user.subject, action="admin_user_deactivated")
    assert details["before"] == {"username": user.username, "active": True}
    assert details["changes"] == {"username": renamed, "active": False}
    assert details["via"] == "cli" and "argon2" not in json.dumps(details)


def test_a_branch_change_records_before_and_after(server, db, unique) -> None:
    admin = admin_api(server, db, unique)
    branch = unique("branch")
    body = {"branch_id": branch, "name": "Bergen", "contact_email": "ops@branch.example"}
    assert admin.post("/branches", body).status_code == 201
    changed = admin.patch(f"/branches/{branch}", {"name": "Bergen Sentrum", "contact_email": ""})
    assert changed.status_code == 200, changed.text
    (details,) = _details(admin, branch_id=branch, action="admin_branch_updated")
    assert details["before"] == {"name": "Bergen", "contact_email": "ops@branch.example"}
    assert details["changes"] == {"name": "Bergen Sentrum", "contact_email": None}
