"""The admin API's door: RFC 6750 bearer tokens of this server with scope `admin`, and
the OpenAPI document at /admin/openapi.json."""

from __future__ import annotations

import jwt
import pytest
import requests

from tests.admin_helpers import admin_api, assert_error


@pytest.fixture
def admin(server, db, unique):
    return admin_api(server, db, unique)


def test_missing_token_is_401_with_a_bearer_challenge(server):
    """RFC 6750 §3.1: no credentials → 401, a challenge without an error code."""
    response = server.get("/admin/clients")
    assert_error(response, 401)
    assert response.headers["www-authenticate"] == 'Bearer realm="oauth2-server"'
    assert response.headers["cache-control"] == "no-store"


def test_basic_credentials_are_not_admin_credentials(server, db):
    client_id, secret = db.create_client(scope="admin")
    response = server.get("/admin/clients", auth=(client_id, secret))
    assert_error(response, 401)


@pytest.mark.parametrize(
    "token", ["not-a-jwt", "a.b.c", jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256")]
)
def test_invalid_token_is_401_invalid_token(server, token):
    response = server.get("/admin/clients", headers={"Authorization": f"Bearer {token}"})
    body = assert_error(response, 401)
    assert body["error"] == "invalid_token"
    assert response.headers["www-authenticate"].startswith(
        'Bearer realm="oauth2-server", error="invalid_token"'
    )


def test_malformed_authorization_header_is_400(server):
    response = server.get("/admin/clients", headers={"Authorization": "Bearer two words"})
    assert_error(response, 400, "Authorization")


def test_token_without_admin_scope_is_403_insufficient_scope(server, db):
    client_id, secret = db.create_client(scope="read")
    token = server.client_credentials_token(client_id, secret)
    response = server.get("/admin/clients", headers={"Authorization": f"Bearer {token}"})
    body = assert_error(response, 403)
    assert body["error"] == "insufficient_scope"
    challenge = response.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="admin"' in challenge


def test_revoked_admin_token_is_refused_at_once(server, admin):
    assert admin.get("/clients").status_code == 200
    claims = jwt.decode(admin.token, options={"verify_signature": False})
    assert admin.post("/tokens/revoke", {"jti": claims["jti"]}).json()["revoked"] == 1
    response = admin.get("/clients")
    assert assert_error(response, 401)["error"] == "invalid_token"


def test_openapi_document_describes_every_admin_operation(server):
    response = requests.get(server.url("/admin/openapi.json"), timeout=30)
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for path, method in [
        ("/admin/clients", "post"),
        ("/admin/clients", "get"),
        ("/admin/clients/{client_id}", "patch"),
        ("/admin/clients/{client_id}", "delete"),
        ("/admin/clients/{client_id}/secret", "post"),
        ("/admin/users", "post"),
        ("/admin/users/{subject}/deactivate", "post"),
        ("/admin/users/{subject}/password", "put"),
        ("/admin/tokens", "get"),
        ("/admin/tokens/revoke", "post"),
        ("/admin/audit", "get"),
    ]:
        operation = paths[path][method]
        assert operation["summary"] and operation["security"] == [{"bearer": ["admin"]}]
    create = paths["/admin/clients"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert create["additionalProperties"] is False and "redirect_uris" in create["properties"]
    assert create["properties"]["person"]["maxLength"] == 200  # issue #11 item 2
    client = document["components"]["schemas"]["Client"]["properties"]
    assert {"person", "bootstrap"} <= set(client)
    assert "person_required" in document["info"]["description"]
    audit_params = {p["name"] for p in paths["/admin/audit"]["get"]["parameters"]}
    assert {"since", "until", "action", "client_id", "min_risk", "flag", "cursor"} <= audit_params
