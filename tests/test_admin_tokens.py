"""Admin API: live tokens, and revocation of one token, one grant, or everything of a
client or a user in one request — every affected token inactive at introspection at
once, nothing else touched, the count returned."""

from __future__ import annotations

import jwt
import pytest

from tests.admin_helpers import (
    PASSWORD,
    Introspector,
    admin_api,
    admin_rows,
    assert_error,
    snapshot,
)
from tests.flows import authorize_with_pkce, exchange_code, public_app

TOKEN_STATE = (
    "SELECT 'a', jti, revoked_at FROM oauth2_access_tokens UNION ALL "
    "SELECT 'r', CAST(id AS TEXT), revoked_at FROM oauth2_refresh_tokens ORDER BY 1, 2"
)


@pytest.fixture
def admin(server, db, unique):
    return admin_api(server, db, unique)


def grant(server, app, user):
    """`user` signs in to `app` and the code is exchanged: the token response."""
    return exchange_code(
        server.base_url, authorize_with_pkce(server.base_url, app, user.username, PASSWORD)
    )


@pytest.fixture
def world(server, db, unique):
    """Two apps, two users, a service: tokens of every combination."""
    apps = [public_app(db, unique) for _ in range(2)]
    users = [db.create_user(unique("user"), PASSWORD) for _ in range(2)]
    grants = {(app, user.subject): grant(server, app, user) for app in apps for user in users}
    service_id, secret = db.create_client(name=unique("svc"))
    service_tokens = [server.client_credentials_token(service_id, secret) for _ in range(2)]
    return {"apps": apps, "users": users, "grants": grants, "service": (service_id, service_tokens)}


def all_tokens(grant):
    return [grant["access_token"], grant["refresh_token"]]


def test_revoking_a_clients_tokens_makes_all_of_them_inactive_at_once(
    server, db, admin, world, unique
):
    introspector = Introspector(server, db, unique)
    app = world["apps"][0]
    response = admin.post("/tokens/revoke", {"client_id": app})
    assert response.status_code == 200, response.text
    assert response.json() == {"revoked": 4, "by": "client_id", "value": app}
    for (client, _), grant in world["grants"].items():
        for token in all_tokens(grant):
            assert introspector.active(token) is (client != app)
    assert all(introspector.active(t) for t in world["service"][1])
    assert admin.post("/tokens/revoke", {"client_id": app}).json()["revoked"] == 0


def test_revoking_a_users_tokens_makes_all_of_them_inactive_at_once(
    server, db, admin, world, unique
):
    introspector = Introspector(server, db, unique)
    subject = world["users"][1].subject
    response = admin.post("/tokens/revoke", {"user": subject})
    assert response.status_code == 200, response.text
    assert response.json()["revoked"] == 4
    for (_, owner), grant in world["grants"].items():
        for token in all_tokens(grant):
            assert introspector.active(token) is (owner != subject)
    row = db.rows(
        "SELECT client_id, subject, details FROM oauth2_token_logs "
        "WHERE action = 'admin_tokens_revoked' ORDER BY id DESC LIMIT 1"
    )[0]
    assert row[0] == admin.client_id and row[1] == subject


def test_revoking_one_access_token_by_jti(server, db, admin, world, unique):
    introspector = Introspector(server, db, unique)
    first, second = world["service"][1]
    jti = jwt.decode(first, options={"verify_signature": False})["jti"]
    assert admin.post("/tokens/revoke", {"jti": jti}).json()["revoked"] == 1
    assert not introspector.active(first) and introspector.active(second)


def test_revoking_one_grant_by_family_id(server, db, admin, world, unique):
    introspector = Introspector(server, db, unique)
    app, user = world["apps"][1], world["users"][0]
    listed = admin.get(
        "/tokens", params={"client_id": app, "user": user.subject, "kind": "refresh"}
    ).json()
    assert len(listed["items"]) == 1
    family = listed["items"][0]["family_id"]
    assert "token_hash" not in listed["items"][0]
    assert admin.post("/tokens/revoke", {"family_id": family}).json()["revoked"] == 2
    for (client, owner), grant in world["grants"].items():
        for token in all_tokens(grant):
            assert introspector.active(token) is not (client == app and owner == user.subject)


def test_listing_live_tokens_by_client_and_user(admin, world):
    app, user = world["apps"][0], world["users"][0]
    by_client = admin.get("/tokens", params={"client_id": app}).json()["items"]
    assert {t["subject"] for t in by_client} == {u.subject for u in world["users"]}
    assert all(t["kind"] == "access_token" and t["client_id"] == app for t in by_client)
    by_user = admin.get("/tokens", params={"user": user.subject, "limit": 1})
    page = by_user.json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    rest = admin.get("/tokens", params={"user": user.subject, "cursor": page["next_cursor"]}).json()
    assert {t["client_id"] for t in page["items"] + rest["items"]} == set(world["apps"])
    assert_error(
        admin.get("/tokens", params={"client_id": app, "cursor": page["next_cursor"]}),
        400,
        "cursor",
    )


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        pytest.param({}, 400, "body", id="empty-body"),
        pytest.param({"client_id": "{app}", "user": "{user}"}, 400, "user", id="two-selectors"),
        pytest.param({"jti": "00000000-0000-0000-0000-000000000000"}, 404, "jti", id="unknown-jti"),
        pytest.param({"family_id": "no-such-family"}, 404, "family_id", id="unknown-family"),
        pytest.param({"client_id": "no-such-client"}, 404, "client_id", id="unknown-client"),
        pytest.param({"user": "no-such-user"}, 404, "user", id="unknown-user"),
        pytest.param({"branch_id": "no-such-branch"}, 404, "branch_id", id="unknown-branch"),
        pytest.param({"everything": True}, 400, "everything", id="unknown-field"),
    ],
)
def test_bad_revocations_name_the_field_and_change_nothing(
    server, db, admin, unique, body, status, field
):
    app = public_app(db, unique)
    user = db.create_user(unique("user"), PASSWORD)
    grant(server, app, user)
    body = {
        k: v.format(app=app, user=user.subject) if isinstance(v, str) else v
        for k, v in body.items()
    }
    before, audited = snapshot(db, TOKEN_STATE), admin_rows(db)
    assert_error(admin.post("/tokens/revoke", body), status, field)
    assert snapshot(db, TOKEN_STATE) == before and admin_rows(db) == audited
