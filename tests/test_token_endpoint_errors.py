"""Bad input at the token endpoint: an RFC 6749 §5.2 error with the right status, and no
token row written (DESIGN invariant 8)."""

from __future__ import annotations

import base64
import time

import pytest
import requests


@pytest.fixture
def confidential(db):
    return db.create_client(scope="read write")


def assert_error(response, status: int, error: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["error"] == error
    assert body.get("error_description")
    return body


def unchanged(db, before: tuple[int, int]) -> bool:
    return (db.count("oauth2_access_tokens"), db.count("oauth2_refresh_tokens")) == before


def snapshot(db) -> tuple[int, int]:
    return db.count("oauth2_access_tokens"), db.count("oauth2_refresh_tokens")


CASES = {
    "unknown-client": (
        dict(auth=("nobody", "secret"), data={"grant_type": "client_credentials"}),
        401,
        "invalid_client",
    ),
    "no-credentials": (dict(data={"grant_type": "client_credentials"}), 401, "invalid_client"),
    "unsupported-grant": (
        dict(data={"grant_type": "password", "username": "a", "password": "b"}),
        400,
        "unsupported_grant_type",
    ),
    # RFC 6749 §5.2: a missing required parameter is invalid_request
    "missing-grant": (dict(data={"scope": "read"}), 400, "invalid_request"),
    "empty-grant": (dict(data={"grant_type": "", "scope": "read"}), 400, "invalid_request"),
    "unknown-scope": (
        dict(data={"grant_type": "client_credentials", "scope": "read admin"}),
        400,
        "invalid_scope",
    ),
    "duplicate-parameter": (
        dict(data=[("grant_type", "client_credentials"), ("scope", "read"), ("scope", "write")]),
        400,
        "invalid_request",
    ),
    "wrong-content-type": (dict(json={"grant_type": "client_credentials"}), 400, "invalid_request"),
    "malformed-body": (
        dict(
            data=b"grant_type=client_credentials&scope=%ff%fe",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        400,
        "invalid_request",
    ),
    "non-ascii-body": (
        dict(
            data="grant_type=client_credentials&scope=é".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        400,
        "invalid_request",
    ),
    "oversize-body": (
        dict(data={"grant_type": "client_credentials", "pad": "x" * 20_000}),
        413,
        "invalid_request",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_token_request_is_refused_and_changes_nothing(server, db, confidential, case):
    client_id, secret = confidential
    kwargs, status, error = CASES[case]
    kwargs = dict(kwargs)
    if "auth" not in kwargs and case != "no-credentials":
        kwargs["auth"] = (client_id, secret)
    before = snapshot(db)
    assert_error(server.post("/oauth2/token", **kwargs), status, error)
    assert unchanged(db, before)


def test_wrong_secret_is_401_with_www_authenticate_and_audited(server, db, confidential):
    client_id, _ = confidential
    before = snapshot(db)
    response = server.post(
        "/oauth2/token", auth=(client_id, "wrong"), data={"grant_type": "client_credentials"}
    )
    assert_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Basic ")
    assert unchanged(db, before)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not db.count(
        "oauth2_token_logs", "action = 'client_auth_failed' AND client_id = :c", c=client_id
    ):
        time.sleep(0.1)
    assert (
        db.count(
            "oauth2_token_logs", "action = 'client_auth_failed' AND client_id = :c", c=client_id
        )
        == 1
    )


def test_get_on_token_endpoint_is_405_json(server):
    response = server.get("/oauth2/token?grant_type=client_credentials")
    assert_error(response, 405, "invalid_request")
    assert response.headers["allow"] == "POST"


def test_parameters_in_query_string_are_ignored(server, db, confidential):
    """DESIGN: token endpoint parameters come from the body only."""
    client_id, secret = confidential
    before = snapshot(db)
    response = server.post(
        "/oauth2/token?grant_type=client_credentials",
        auth=(client_id, secret),
        data={"scope": "read"},
    )
    assert_error(response, 400, "invalid_request")  # no grant_type in the body
    assert unchanged(db, before)


def test_public_client_cannot_use_client_credentials(server, db):
    client_id, _ = db.create_client(
        public=True, grant_types=["authorization_code"], redirect_uris=["http://127.0.0.1:9/cb"]
    )
    before = snapshot(db)
    response = server.post(
        "/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id}
    )
    assert response.status_code in (400, 401)
    assert response.json()["error"] in ("invalid_client", "unauthorized_client")
    assert unchanged(db, before)


def test_client_not_registered_for_grant_is_unauthorized_client(server, db):
    client_id, secret = db.create_client(
        grant_types=["authorization_code"], redirect_uris=["https://app.example.com/cb"]
    )
    before = snapshot(db)
    response = server.post(
        "/oauth2/token", auth=(client_id, secret), data={"grant_type": "client_credentials"}
    )
    assert_error(response, 400, "unauthorized_client")
    assert unchanged(db, before)


def test_deactivated_client_is_refused(server, db):
    from oauth2_server.storage.clients import set_client_active

    client_id, secret = db.create_client()
    with db.session() as session:
        set_client_active(session, client_id, False)
    response = server.post(
        "/oauth2/token", auth=(client_id, secret), data={"grant_type": "client_credentials"}
    )
    assert_error(response, 401, "invalid_client")


def test_malformed_basic_header_is_invalid_client(server, db):
    before = snapshot(db)
    response = server.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": "Basic " + base64.b64encode(b"\xff").decode()},
    )
    assert response.json()["error"] == "invalid_client"
    assert unchanged(db, before)


def test_repeated_failures_are_throttled_but_the_correct_secret_still_works(start_server, db):
    """DESIGN "Authlib pitfalls": failed authentications are limited (429 past the limit);
    the correct secret is checked first and always passes (tests/test_auth_floods.py).
    Failures count per client id and per IP, shared by every server on one PostgreSQL
    database, so this test speaks from an IP of its own (trusted X-Forwarded-For)."""
    live = start_server(
        OAUTH2_CLIENT_AUTH_FAILURE_LIMIT="3", OAUTH2_FORWARDED_ALLOW_IPS="127.0.0.1"
    )
    client_id, secret = db.create_client()

    def attempt(presented: str) -> requests.Response:
        return live.post(
            "/oauth2/token",
            auth=(client_id, presented),
            headers={"X-Forwarded-For": "10.250.0.1"},
            data={"grant_type": "client_credentials"},
        )

    assert attempt(secret).status_code == 200
    for _ in range(3):
        assert attempt("wrong").status_code == 401
    throttled = attempt("wrong")
    assert_error(throttled, 429, "invalid_client")
    assert int(throttled.headers["retry-after"]) >= 1
    assert attempt(secret).status_code == 200
