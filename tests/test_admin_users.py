"""Admin API: users — create, list, read, update, deactivate (revokes their tokens), set
password; never a password hash in an answer; bad input changes nothing."""

from __future__ import annotations

import pytest
import requests

from tests.admin_helpers import (
    PASSWORD,
    Introspector,
    admin_api,
    admin_rows,
    assert_error,
    snapshot,
)
from tests.flows import authorize_with_pkce, exchange_code, public_app

USER_ROWS = "SELECT subject, username, password_hash, active FROM oauth2_users ORDER BY id"


@pytest.fixture
def admin(server, db, unique):
    return admin_api(server, db, unique)


@pytest.fixture
def app_client(db, unique):
    return public_app(db, unique)


def sign_in(server, client_id, username, password):
    """Tokens for the user through the browser flow (raises if the login fails)."""
    return exchange_code(
        server.base_url, authorize_with_pkce(server.base_url, client_id, username, password)
    )


def login_refused(server, client_id, username, password) -> bool:
    browser = requests.Session()
    try:
        authorize_with_pkce(server.base_url, client_id, username, password, browser=browser)
    except AssertionError:
        return True
    return False


def test_create_read_list_and_update_a_user(server, db, admin, unique, app_client):
    name = unique("ursula")
    response = admin.post("/users", {"username": name, "password": PASSWORD})
    assert response.status_code == 201, response.text
    user = response.json()
    assert set(user) == {"subject", "username", "active", "created_at"}
    assert sign_in(server, app_client, name, PASSWORD)["access_token"]
    assert admin.get(f"/users/{user['subject']}").json() == user
    seen, cursor = [], None
    while True:
        page = admin.get(
            "/users", params={"limit": 3, **({"cursor": cursor} if cursor else {})}
        ).json()
        seen += page["items"]
        if not (cursor := page["next_cursor"]):
            break
    assert user in seen and len(seen) == db.count("oauth2_users")
    renamed = admin.patch(f"/users/{user['subject']}", {"username": name + "-b"}).json()
    assert renamed["username"] == name + "-b" and renamed["revoked"] == 0
    actions = [
        r[0]
        for r in db.rows(
            "SELECT action FROM oauth2_token_logs WHERE subject = :s "
            "AND action LIKE 'admin%' ORDER BY id",
            s=user["subject"],
        )
    ]
    assert actions == ["admin_user_created", "admin_user_updated"]


def test_deactivating_a_user_revokes_their_tokens_at_once(server, db, admin, unique, app_client):
    introspector = Introspector(server, db, unique)
    user = db.create_user(unique("vic"), PASSWORD)
    first = sign_in(server, app_client, user.username, PASSWORD)
    second = sign_in(server, app_client, user.username, PASSWORD)
    tokens = [t[k] for t in (first, second) for k in ("access_token", "refresh_token")]
    assert all(introspector.active(t) for t in tokens)
    bystander = sign_in(
        server, app_client, db.create_user(unique("wes"), PASSWORD).username, PASSWORD
    )
    response = admin.post(f"/users/{user.subject}/deactivate")
    assert response.status_code == 200, response.text
    assert response.json()["active"] is False and response.json()["revoked"] == 4
    assert not any(introspector.active(t) for t in tokens)
    assert introspector.active(bystander["access_token"])
    assert login_refused(server, app_client, user.username, PASSWORD)
    refreshed = server.post(
        "/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": app_client,
        },
    )
    assert refreshed.status_code == 400


def test_set_password_replaces_it_and_can_revoke_tokens(server, db, admin, unique, app_client):
    introspector = Introspector(server, db, unique)
    user = db.create_user(unique("xena"), PASSWORD)
    tokens = sign_in(server, app_client, user.username, PASSWORD)
    new_password = "a much newer password"
    response = admin.put(
        f"/users/{user.subject}/password", {"password": new_password, "revoke_tokens": True}
    )
    assert response.status_code == 200, response.text
    assert response.json()["revoked"] == 2 and "password" not in response.text
    assert not introspector.active(tokens["access_token"])
    assert login_refused(server, app_client, user.username, PASSWORD)
    assert sign_in(server, app_client, user.username, new_password)["access_token"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("POST", "/users", {"username": "{taken}", "password": PASSWORD}, 409, "username"),
        ("POST", "/users", {"username": "new-one", "password": "short"}, 400, "password"),
        ("POST", "/users", {"username": "new-one"}, 400, "password"),
        (
            "POST",
            "/users",
            {"username": "new-one", "password": PASSWORD, "admin": True},
            400,
            "admin",
        ),
        ("PATCH", "/users/{subject}", {"username": "{taken}"}, 409, "username"),
        ("PATCH", "/users/{subject}", {"active": 0}, 400, "active"),
        ("PATCH", "/users/{subject}", {"password": PASSWORD}, 400, "password"),
        ("PUT", "/users/{subject}/password", {"password": "short"}, 400, "password"),
        ("PATCH", "/users/no-such-subject", {"active": False}, 404, "subject"),
        ("POST", "/users/no-such-subject/deactivate", None, 404, "subject"),
        ("PUT", "/users/no-such-subject/password", {"password": PASSWORD}, 404, "subject"),
        ("GET", "/users/no-such-subject", None, 404, "subject"),
    ],
)
def test_bad_user_requests_name_the_field_and_change_nothing(
    db, admin, unique, method, path, body, status, field
):
    taken = db.create_user(unique("taken"), PASSWORD)
    target = db.create_user(unique("target"), PASSWORD)
    if body and body.get("username") == "{taken}":
        body = {**body, "username": taken.username.upper()}
    before, audited = snapshot(db, USER_ROWS), admin_rows(db)
    response = admin.request(method, path.format(subject=target.subject), json=body)
    assert_error(response, status, field)
    assert snapshot(db, USER_ROWS) == before and admin_rows(db) == audited
