"""Admin API: branches — create, list, read, update; which clients may broker a branch
(set on the client); connect and disconnect a branch's Google grant against the fake
Google; revoke everything of a branch's clients in one request."""

from __future__ import annotations

import random

import pytest

from tests.admin_helpers import Introspector, admin_api, admin_rows, assert_error, snapshot
from tests.fake_google import Account, callback, follow_consent

BRANCH_ROWS = (
    "SELECT branch_id, name, contact_email, google_account_id, google_location_id, active "
    "FROM oauth2_branches ORDER BY branch_id"
)
GRANT_ROWS = "SELECT client_id, branch_id FROM oauth2_client_branches ORDER BY client_id, branch_id"


@pytest.fixture
def admin(upstream, db, unique):
    return admin_api(upstream, db, unique)


@pytest.fixture
def branch(admin, unique):
    response = admin.post(
        "/branches",
        {"branch_id": unique("br"), "name": "Main Street", "contact_email": "owner@main.example"},
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_create_read_list_and_update_a_branch(db, admin, branch):
    assert branch["active"] is True and branch["clients"] == [] and branch["connections"] == []
    branch_id = branch["branch_id"]
    assert admin.get(f"/branches/{branch_id}").json() == branch
    seen, cursor = [], None
    while True:
        page = admin.get("/branches", params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        seen += page.json()["items"]
        if not (cursor := page.json()["next_cursor"]):
            break
    assert branch_id in [b["branch_id"] for b in seen] and len(seen) == db.count("oauth2_branches")
    updated = admin.patch(
        f"/branches/{branch_id}", {"name": "Main St.", "google_location_id": "42", "active": False}
    ).json()
    assert (updated["name"], updated["google_location_id"], updated["active"]) == (
        "Main St.",
        "42",
        False,
    )
    actions = [
        r[0]
        for r in db.rows(
            "SELECT action FROM oauth2_token_logs WHERE branch_id = :b "
            "AND client_id = :c ORDER BY id",
            b=branch_id,
            c=admin.client_id,
        )
    ]
    assert actions == ["admin_branch_created", "admin_branch_updated"]


def test_clients_are_granted_branches_through_the_client(admin, branch, unique):
    created = admin.post(
        "/clients", {"name": unique("svc"), "branches": [branch["branch_id"]]}
    ).json()
    assert created["branches"] == [branch["branch_id"]]
    assert admin.get(f"/branches/{branch['branch_id']}").json()["clients"] == [created["client_id"]]
    changed = admin.patch(f"/clients/{created['client_id']}", {"branches": ["*"]}).json()
    assert changed["branches"] == ["*"]
    assert admin.get(f"/branches/{branch['branch_id']}").json()["clients"] == []


def test_connect_and_disconnect_a_branch_through_the_admin_api(db, admin, branch, google):
    branch_id = branch["branch_id"]
    google.account = Account(str(random.randrange(10**20, 10**21)), f"{branch_id}@owner.example")
    try:
        start = admin.post(f"/branches/{branch_id}/connect", {"provider": "google"})
        assert start.status_code == 200, start.text
        assert start.json()["redirect_uri"].endswith("/upstream/google/callback")
        done = callback(follow_consent(start.json()["authorization_url"]))
        assert done.status_code == 200, done.text
    finally:
        google.reset()
    [connection] = admin.get(f"/branches/{branch_id}").json()["connections"]
    assert connection["provider"] == "google" and connection["account_email"].startswith(branch_id)
    assert "access_token" not in str(connection) and "refresh_token" not in str(connection)
    response = admin.post(f"/branches/{branch_id}/disconnect", {"provider": "google"})
    assert response.status_code == 200, response.text
    assert response.json()["grant_deleted"] is True and response.json()["revoked"] is True
    assert len(google.revocations) == 1
    assert admin.get(f"/branches/{branch_id}").json()["connections"] == []
    actions = {
        r[0]
        for r in db.rows("SELECT action FROM oauth2_token_logs WHERE branch_id = :b", b=branch_id)
    }
    assert {
        "admin_branch_connect_started",
        "upstream_linked",
        "upstream_unlinked",
        "admin_branch_disconnected",
    } <= actions


def test_revoking_a_branch_revokes_every_token_of_its_clients_at_once(
    upstream, db, admin, branch, unique
):
    introspector = Introspector(upstream, db, unique)
    branch_id = branch["branch_id"]
    granted = [
        admin.post("/clients", {"name": unique("svc"), "branches": [branch_id]}).json()
        for _ in range(2)
    ]
    everywhere = admin.post("/clients", {"name": unique("svc"), "branches": ["*"]}).json()
    other = admin.post("/clients", {"name": unique("svc")}).json()
    tokens = {
        c["client_id"]: [
            upstream.client_credentials_token(c["client_id"], c["client_secret"]) for _ in range(2)
        ]
        for c in [*granted, everywhere, other]
    }
    listed = admin.get("/tokens", params={"branch_id": branch_id}).json()["items"]
    assert sorted(t["client_id"] for t in listed) == sorted(
        c["client_id"] for c in granted for _ in "ab"
    )
    response = admin.post("/tokens/revoke", {"branch_id": branch_id})
    assert response.status_code == 200, response.text
    assert response.json()["revoked"] == 4
    for client in granted:
        assert not any(introspector.active(t) for t in tokens[client["client_id"]])
    for client in (everywhere, other):
        assert all(introspector.active(t) for t in tokens[client["client_id"]])


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("POST", "/branches", {"branch_id": "{branch}", "name": "Again"}, 409, "branch_id"),
        ("POST", "/branches", {"branch_id": "has space", "name": "x"}, 400, "branch_id"),
        ("POST", "/branches", {"branch_id": "ok-id", "name": " "}, 400, "name"),
        (
            "POST",
            "/branches",
            {"branch_id": "ok-id", "name": "x", "contact_email": "nope"},
            400,
            "contact_email",
        ),
        ("POST", "/branches", {"branch_id": "ok-id", "name": "x", "city": "Oslo"}, 400, "city"),
        ("PATCH", "/branches/{branch}", {"active": "yes"}, 400, "active"),
        ("PATCH", "/branches/no-such-branch", {"name": "x"}, 404, "branch_id"),
        ("GET", "/branches/no-such-branch", None, 404, "branch_id"),
        ("POST", "/branches/{branch}/connect", {"provider": "myspace"}, 400, "provider"),
        ("POST", "/branches/no-such-branch/connect", {"provider": "google"}, 404, "branch_id"),
        ("POST", "/branches/{branch}/disconnect", {"provider": "google"}, 400, "provider"),
        ("PATCH", "/clients/{client}", {"branches": ["no-such-branch"]}, 400, "branches"),
    ],
)
def test_bad_branch_requests_name_the_field_and_change_nothing(
    db, admin, branch, unique, method, path, body, status, field
):
    client = admin.post(
        "/clients", {"name": unique("svc"), "branches": [branch["branch_id"]]}
    ).json()
    if body and body.get("branch_id") == "{branch}":
        body = {**body, "branch_id": branch["branch_id"]}
    before = (
        snapshot(db, BRANCH_ROWS),
        snapshot(db, GRANT_ROWS),
        admin_rows(db),
        db.count("oauth2_upstream_states"),
    )
    response = admin.request(
        method, path.format(branch=branch["branch_id"], client=client["client_id"]), json=body
    )
    assert_error(response, status, field)
    after = (
        snapshot(db, BRANCH_ROWS),
        snapshot(db, GRANT_ROWS),
        admin_rows(db),
        db.count("oauth2_upstream_states"),
    )
    assert after == before
