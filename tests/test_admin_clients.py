"""Admin API: clients — create (secret shown once), list, read, update, rotate, delete;
every change audited; bad input answered with a JSON error naming the field, changing
nothing."""

from __future__ import annotations

import pytest

from tests.admin_helpers import Introspector, admin_api, admin_rows, assert_error, snapshot
from tests.flows import REDIRECT_URI, authorize_with_pkce, exchange_code

CLIENT_ROWS = (
    "SELECT client_id, name, secret_hash, grant_types, redirect_uris, scope, active "
    "FROM oauth2_clients ORDER BY id"
)


@pytest.fixture
def admin(server, db, unique):
    return admin_api(server, db, unique)


@pytest.fixture
def created(admin, unique):
    response = admin.post("/clients", {"name": unique("svc"), "scope": "read write"})
    assert response.status_code == 201, response.text
    return response.json()


def token_works(server, client_id, secret, **data):
    response = server.post(
        "/oauth2/token", auth=(client_id, secret), data={"grant_type": "client_credentials", **data}
    )
    return response.status_code == 200


def test_created_client_gets_its_secret_once_and_can_get_tokens(server, db, admin, created):
    assert (
        created["client_secret"] and created["token_endpoint_auth_method"] == "client_secret_basic"
    )
    assert token_works(server, created["client_id"], created["client_secret"], scope="read")
    shown = admin.get(f"/clients/{created['client_id']}").json()
    listed = []
    cursor = None
    while True:
        page = admin.get(
            "/clients", params={"limit": 2, **({"cursor": cursor} if cursor else {})}
        ).json()
        listed += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    ours = [item for item in listed if item["client_id"] == created["client_id"]]
    assert ours == [shown]
    assert len({item["client_id"] for item in listed}) == len(listed) == db.count("oauth2_clients")
    for item in [shown, *listed]:
        assert "client_secret" not in item and "secret_hash" not in item
    row = db.rows(
        "SELECT client_id, details FROM oauth2_token_logs WHERE action = 'admin_client_created' "
        "ORDER BY id DESC LIMIT 1"
    )[0]
    assert row[0] == admin.client_id and created["client_secret"] not in str(row[1])


def test_public_client_has_no_secret(admin, unique):
    response = admin.post(
        "/clients",
        {
            "name": unique("app"),
            "public": True,
            "grant_types": ["authorization_code", "refresh_token"],
            "redirect_uris": ["https://app.example/cb", "http://127.0.0.1:8080/cb"],
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert "client_secret" not in body and body["token_endpoint_auth_method"] == "none"
    assert_error(admin.post(f"/clients/{body['client_id']}/secret"), 400, "client_id")


def test_update_changes_redirect_uris_scope_grants_and_is_audited(server, db, admin, created):
    client_id = created["client_id"]
    change = {
        "redirect_uris": [REDIRECT_URI],
        "grant_types": ["client_credentials", "authorization_code", "refresh_token"],
        "scope": "read",
    }
    response = admin.patch(f"/clients/{client_id}", change)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["redirect_uris"] == [REDIRECT_URI] and body["scope"] == "read"
    # the server's client cache was invalidated: the narrower scope applies at once
    assert not token_works(server, client_id, created["client_secret"], scope="write")
    assert token_works(server, client_id, created["client_secret"], scope="read")
    rows = db.rows(
        "SELECT client_id FROM oauth2_token_logs WHERE action = 'admin_client_updated' "
        "AND CAST(details AS TEXT) LIKE :c",
        c=f"%{client_id}%",
    )
    assert [r[0] for r in rows] == [admin.client_id]


def test_deactivating_a_client_revokes_its_tokens_and_blocks_new_ones(
    server, db, admin, created, unique
):
    introspector = Introspector(server, db, unique)
    token = server.client_credentials_token(created["client_id"], created["client_secret"])
    assert introspector.active(token)
    body = admin.patch(f"/clients/{created['client_id']}", {"active": False}).json()
    assert body["active"] is False and body["revoked"] == 1
    assert not introspector.active(token)
    assert not token_works(server, created["client_id"], created["client_secret"])


def test_rotating_the_secret_returns_a_new_one_and_the_old_stops_working(server, admin, created):
    client_id, old = created["client_id"], created["client_secret"]
    assert token_works(server, client_id, old)
    response = admin.post(f"/clients/{client_id}/secret")
    assert response.status_code == 200, response.text
    new = response.json()["client_secret"]
    assert new and new != old
    assert token_works(server, client_id, new)
    assert not token_works(server, client_id, old)


def test_delete_revokes_every_token_of_the_client(server, db, admin, unique):
    introspector = Introspector(server, db, unique)
    body = admin.post(
        "/clients",
        {
            "name": unique("web"),
            "public": True,
            "grant_types": ["authorization_code", "refresh_token"],
            "redirect_uris": [REDIRECT_URI],
            "scope": "read",
        },
    ).json()
    user = db.create_user(unique("dora"))
    grant = exchange_code(
        server.base_url,
        authorize_with_pkce(
            server.base_url, body["client_id"], user.username, "correct horse battery"
        ),
    )
    assert introspector.active(grant["access_token"]) and introspector.active(
        grant["refresh_token"]
    )
    response = admin.delete(f"/clients/{body['client_id']}")
    assert response.status_code == 200, response.text
    assert response.json()["revoked"] == 2
    assert not introspector.active(grant["access_token"])
    assert not introspector.active(grant["refresh_token"])
    assert db.count("oauth2_clients", "client_id = :c", c=body["client_id"]) == 0
    assert_error(admin.get(f"/clients/{body['client_id']}"), 404, "client_id")


@pytest.mark.parametrize(
    ("send", "status", "field"),
    [
        ({"data": '{"name": "x",', "headers": {"Content-Type": "application/json"}}, 400, "body"),
        ({"data": "[1, 2]", "headers": {"Content-Type": "application/json"}}, 400, "body"),
        (
            {"data": "name=x", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
            415,
            "body",
        ),
        ({"json": {"name": "x", "color": "red"}}, 400, "color"),
        ({"json": {"scope": "read"}}, 400, "name"),
        ({"json": {"name": 7}}, 400, "name"),
        ({"json": {"name": "x", "redirect_uris": "https://a.example/cb"}}, 400, "redirect_uris"),
        (
            {
                "json": {
                    "name": "x",
                    "grant_types": ["authorization_code"],
                    "redirect_uris": ["http://app.example/cb"],
                }
            },
            400,
            "redirect_uris",
        ),
        (
            {
                "json": {
                    "name": "x",
                    "grant_types": ["authorization_code"],
                    "redirect_uris": ["https://app.example/cb#frag"],
                }
            },
            400,
            "redirect_uris",
        ),
        ({"json": {"name": "x", "grant_types": ["password"]}}, 400, "grant_types"),
        ({"json": {"name": "x", "scope": 'read "quoted"'}}, 400, "scope"),
        (
            {"json": {"name": "x", "public": True, "grant_types": ["client_credentials"]}},
            400,
            "grant_types",
        ),
    ],
)
def test_bad_create_requests_name_the_field_and_change_nothing(db, admin, send, status, field):
    before, audited = snapshot(db, CLIENT_ROWS), admin_rows(db)
    response = admin.request("POST", "/clients", **send)
    assert_error(response, status, field)
    assert snapshot(db, CLIENT_ROWS) == before and admin_rows(db) == audited


def test_duplicate_name_is_409_and_changes_nothing(db, admin, created):
    before, audited = snapshot(db, CLIENT_ROWS), admin_rows(db)
    assert_error(admin.post("/clients", {"name": created["name"].upper()}), 409, "name")
    other = admin.post("/clients", {"name": created["name"] + "-2"}).json()
    before, audited = snapshot(db, CLIENT_ROWS), admin_rows(db)
    assert_error(
        admin.patch(f"/clients/{other['client_id']}", {"name": created["name"]}), 409, "name"
    )
    assert snapshot(db, CLIENT_ROWS) == before and admin_rows(db) == audited


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"redirect_uris": ["http://evil.example/cb"]}, "redirect_uris"),
        ({"redirect_uris": ["https://app.example/cb#x"]}, "redirect_uris"),
        ({"redirect_uris": ["/relative"]}, "redirect_uris"),
        ({"grant_types": []}, "grant_types"),
        ({"active": "no"}, "active"),
        ({"client_secret": "mine"}, "client_secret"),
    ],
)
def test_bad_updates_name_the_field_and_change_nothing(db, admin, created, body, field):
    before, audited = snapshot(db, CLIENT_ROWS), admin_rows(db)
    assert_error(admin.patch(f"/clients/{created['client_id']}", body), 400, field)
    assert snapshot(db, CLIENT_ROWS) == before and admin_rows(db) == audited


def test_unknown_client_is_404_everywhere_and_changes_nothing(db, admin):
    before, audited = snapshot(db, CLIENT_ROWS), admin_rows(db)
    for response in (
        admin.get("/clients/nope"),
        admin.patch("/clients/nope", {"scope": "read"}),
        admin.post("/clients/nope/secret"),
        admin.delete("/clients/nope"),
    ):
        assert_error(response, 404, "client_id")
    assert snapshot(db, CLIENT_ROWS) == before and admin_rows(db) == audited


def test_tampered_cursor_is_400_naming_cursor(db, admin, created):
    page = admin.get("/clients", params={"limit": 1}).json()
    cursor = page["next_cursor"]
    payload, mac = cursor.split(".")
    forged = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + mac
    assert_error(admin.get("/clients", params={"cursor": forged}), 400, "cursor")
    assert_error(admin.get("/clients", params={"cursor": cursor + "x"}), 400, "cursor")
    assert_error(admin.get("/users", params={"cursor": cursor}), 400, "cursor")
    assert_error(admin.get("/clients", params={"limit": 0}), 400, "limit")
    assert_error(admin.get("/clients", params={"colour": 1}), 400, "colour")
