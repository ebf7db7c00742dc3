"""RFC-exact client authentication (RFC 6749 §2.3, §3.2.1, §5.2) at the token,
introspection and revocation endpoints: one method per request, plain-words errors that
name the client's registered method, and `invalid_request` for a missing grant_type."""

from __future__ import annotations

import time

import pytest

from tests.admin_helpers import Introspector

ENDPOINTS = ("/oauth2/token", "/oauth2/introspect", "/oauth2/revoke")


@pytest.fixture
def two_clients(server, db, unique):
    """Client A (client_secret_basic), client B (client_secret_post), A's access token."""
    a = db.create_client(name=unique("a"), scope="read")
    b = db.create_client(
        name=unique("b"), scope="read", token_endpoint_auth_method="client_secret_post"
    )
    token = server.client_credentials_token(*a)
    return a, b, token


def body_for(path: str, token: str) -> dict[str, str]:
    if path == "/oauth2/token":
        return {"grant_type": "client_credentials"}
    return {"token": token}


def rows(db) -> tuple[int, int, int]:
    """(access tokens, refresh tokens, revoked access tokens): what a request could change."""
    return (
        db.count("oauth2_access_tokens"),
        db.count("oauth2_refresh_tokens"),
        db.count("oauth2_access_tokens", "revoked_at IS NOT NULL"),
    )


def wait_for_audit(db, where: str, timeout: float = 15, **params) -> int:
    """Poll for audit rows (read-only events are written in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        found = db.count("oauth2_token_logs", where, **params)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def double_auth_cases(a, b):
    """(name, requests kwargs except data, extra body): each presents two methods."""
    (a_id, a_secret), (b_id, b_secret) = a, b
    return {
        "basic+wrong-body-secret": ((a_id, a_secret), {"client_secret": "wrong"}),
        "basic+same-body-secret": ((a_id, a_secret), {"client_secret": a_secret}),
        "basic+body-id-and-secret-of-another-client": (
            (a_id, a_secret),
            {"client_id": b_id, "client_secret": b_secret},
        ),
        "basic+body-id-of-another-client": ((a_id, a_secret), {"client_id": b_id}),
        "secretless-basic+body-secret": ((a_id, ""), {"client_secret": a_secret}),
    }


CASE_NAMES = [
    "basic+wrong-body-secret",
    "basic+same-body-secret",
    "basic+body-id-and-secret-of-another-client",
    "basic+body-id-of-another-client",
    "secretless-basic+body-secret",
]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("case", CASE_NAMES)
def test_two_authentication_methods_are_invalid_request_and_change_nothing(
    server, db, unique, two_clients, path, case
):
    """RFC 6749 §2.3: "The client MUST NOT use more than one authentication method in each
    request"; §5.2: that is `invalid_request` (400). No token is issued or revoked, nothing
    is introspected, and the refusal is audited."""
    a, b, token = two_clients
    auth, extra = double_auth_cases(a, b)[case]
    before = rows(db)
    audited_before = db.count(
        "oauth2_token_logs",
        "action = 'introspected' AND client_id = :c",
        c=a[0],
    )
    response = server.post(path, auth=auth, data={**body_for(path, token), **extra})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["error"] == "invalid_request", body
    assert "one" in body["error_description"] and "[" not in body["error_description"]
    assert "access_token" not in body and "active" not in body
    assert rows(db) == before
    assert (
        wait_for_audit(
            db,
            "action = 'client_auth_failed' AND client_id = :c"
            " AND CAST(flags AS TEXT) LIKE '%multiple_auth_methods%'",
            c=a[0],
        )
        >= 1
    )
    # the refused request was not treated as an introspection either
    assert (
        db.count("oauth2_token_logs", "action = 'introspected' AND client_id = :c", c=a[0])
        == audited_before
    )
    # the token A holds is still good
    assert Introspector(server, db, unique).active(token)


@pytest.mark.parametrize("extra", ["client_id", "empty-client_secret"])
def test_basic_with_identification_only_in_the_body_is_one_method(server, db, two_clients, extra):
    """RFC 6749 §3.2.1: a client "MAY use the client_id request parameter to identify
    itself"; naming the Basic client again is identification, not a second method. §3.1:
    "Parameters sent without a value MUST be treated as if they were omitted", so an empty
    `client_secret=` is no second method either."""
    (a_id, a_secret), _, _ = two_clients
    body = {"client_id": a_id} if extra == "client_id" else {"client_secret": ""}
    response = server.post(
        "/oauth2/token",
        auth=(a_id, a_secret),
        data={"grant_type": "client_credentials", **body},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "registered, presented, status",
    [
        ("client_secret_post", "basic", 401),
        ("client_secret_basic", "post", 401),
    ],
)
def test_wrong_method_names_the_registered_one_in_plain_words(
    server, db, unique, registered, presented, status
):
    """RFC 6749 §5.2 `invalid_client`; the description says how this client must
    authenticate (RFC 7591 §2 method names), never a Python list."""
    client_id, secret = db.create_client(
        name=unique("m"), scope="read", token_endpoint_auth_method=registered
    )
    kwargs = (
        {"auth": (client_id, secret), "data": {"grant_type": "client_credentials"}}
        if presented == "basic"
        else {
            "data": {
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            }
        }
    )
    before = rows(db)
    response = server.post("/oauth2/token", **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == "invalid_client"
    description = body["error_description"]
    assert f"this client authenticates with {registered}" in description, description
    assert "[" not in description and "'" not in description
    assert rows(db) == before


def test_public_client_at_introspection_is_told_why(server, db, unique, two_clients):
    """RFC 7662 §2.1: the caller must authenticate; a public client (method `none`) is
    refused with a description naming its method."""
    _, _, token = two_clients
    public_id, _ = db.create_client(
        name=unique("pub"),
        public=True,
        grant_types=["authorization_code"],
        redirect_uris=["http://127.0.0.1/cb"],
    )
    response = server.post("/oauth2/introspect", data={"token": token, "client_id": public_id})
    assert response.status_code in (400, 401), response.text
    body = response.json()
    assert body["error"] == "invalid_client"
    assert "authenticates with none" in body["error_description"], body
    assert "[" not in body["error_description"]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"auth": ("no-such-client", "secret")}, "unknown or inactive client"),
        ({}, "no client authentication"),
    ],
)
def test_other_client_failures_are_plain_words(server, kwargs, fragment):
    response = server.post("/oauth2/token", data={"grant_type": "client_credentials"}, **kwargs)
    assert response.status_code == 401, response.text
    description = response.json()["error_description"]
    assert fragment in description and "[" not in description


def test_wrong_secret_says_so_without_a_repr(server, two_clients):
    (a_id, _), _, _ = two_clients
    response = server.post(
        "/oauth2/token", auth=(a_id, "wrong"), data={"grant_type": "client_credentials"}
    )
    assert response.status_code == 401
    assert response.json()["error_description"] == (
        "client authentication failed: wrong client_secret"
    )
    assert response.headers["www-authenticate"].startswith("Basic ")


def test_missing_grant_type_is_invalid_request(server, db, two_clients):
    """RFC 6749 §5.2: a missing required parameter is `invalid_request`, not
    `unsupported_grant_type`."""
    (a_id, a_secret), _, _ = two_clients
    before = rows(db)
    response = server.post("/oauth2/token", auth=(a_id, a_secret), data={"scope": "read"})
    assert response.status_code == 400
    body = response.json()
    assert body == {
        "error": "invalid_request",
        "error_description": "the request has no grant_type parameter (RFC 6749 section 4)",
    }
    assert rows(db) == before


def test_unsupported_grant_type_description_has_no_repr(server, two_clients):
    (a_id, a_secret), _, _ = two_clients
    response = server.post(
        "/oauth2/token", auth=(a_id, a_secret), data={"grant_type": 'pass"wo\\rd'}
    )
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "unsupported_grant_type"
    assert body["error_description"] == "grant_type 'pass?wo?rd' is not supported"
