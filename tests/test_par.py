"""Pushed Authorization Requests (RFC 9126) through the live server.

The client pushes with httpx (a library we did not write), the user's browser is a
`requests.Session` following the login and consent pages, and the code is redeemed with
the PKCE verifier the test made (RFC 7636 S256).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time

import httpx
import pytest
import requests

from tests.admin_helpers import admin_api, cli_json
from tests.flows import REDIRECT_URI, decide, login, query_of

PASSWORD = "correct horse battery"
URN = "urn:ietf:params:oauth:request_uri:"


def pkce() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge), RFC 7636 §4.1–4.2."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def push(server, client_id: str, secret: str | None = None, **params: str) -> httpx.Response:
    """POST /oauth2/par with an authorization request for REDIRECT_URI (PKCE S256 unless
    `code_challenge` is given as "")."""
    body = {
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        "scope": "read",
        "state": "st-" + secrets.token_hex(4),
        "code_challenge_method": "S256",
        **params,
    }
    body = {name: value for name, value in body.items() if value != ""}
    if secret is None:
        body["client_id"] = client_id
    auth = (client_id, secret) if secret is not None else None
    return httpx.post(server.url("/oauth2/par"), data=body, auth=auth, timeout=30)


def sign_in_and_consent(server, browser: requests.Session, url: str, username: str):
    """Follow the authorization endpoint's pages for `url`; the final 302's location."""
    page = browser.get(url, allow_redirects=False, timeout=30)
    assert page.status_code == 200 and 'name="username"' in page.text, page.text[:300]
    done = login(browser, server.base_url, page, username, PASSWORD)
    assert done.status_code == 303, done.text[:300]
    page = browser.get(server.base_url + done.headers["location"], allow_redirects=False)
    assert page.status_code == 200 and 'name="decision"' in page.text, page.text[:300]
    page = decide(browser, server.base_url, page)
    assert page.status_code == 302, page.text[:300]
    return page.headers["location"]


@pytest.fixture
def confidential_app(db, unique):
    client_id, secret = db.create_client(
        name=unique("par app"),
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI],
        scope="read write",
    )
    return client_id, secret


def test_pushed_request_runs_the_code_flow_and_query_parameters_cannot_change_it(
    server, db, unique, confidential_app
):
    """RFC 9126 §2.2 (201, request_uri, expires_in ≤ 60) and §4: the authorization endpoint
    acts on the pushed parameters only; a scope or redirect_uri added to the front-channel
    URL is ignored."""
    client_id, secret = confidential_app
    user = db.create_user(unique("parker"), PASSWORD)
    verifier, challenge = pkce()
    pushed = push(server, client_id, secret, code_challenge=challenge, state="pushed-state")
    assert pushed.status_code == 201, pushed.text
    assert pushed.headers["cache-control"] == "no-store"
    answer = pushed.json()
    assert answer["request_uri"].startswith(URN) and 0 < answer["expires_in"] <= 60
    url = (
        server.url("/oauth2/authorize?")
        + httpx.QueryParams(
            client_id=client_id,
            request_uri=answer["request_uri"],
            scope="read write",
            redirect_uri="http://127.0.0.1:9/elsewhere",
        ).__str__()
    )
    location = sign_in_and_consent(server, requests.Session(), url, user.username)
    assert location.startswith(REDIRECT_URI + "?")
    params = query_of(location)
    assert params["state"] == "pushed-state" and params["iss"] == server.base_url
    token = httpx.post(
        server.url("/oauth2/token"),
        auth=(client_id, secret),
        data={
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        },
        timeout=30,
    )
    assert token.status_code == 200, token.text
    assert token.json()["scope"] == "read"  # the pushed scope, not the query's
    pushes = db.count(
        "oauth2_token_logs",
        "action = 'authorization_request_pushed' AND client_id = :c",
        c=client_id,
    )
    assert pushes == 1
    assert db.count("oauth2_pushed_requests", "client_id = :c", c=client_id) == 0


def test_request_uri_works_once(server, db, unique):
    """§4: single use. A second browser presenting the used request_uri gets an error page
    (no redirect), audited with flag `invalid_request_uri`."""
    client_id, _ = db.create_client(
        name=unique("public par"),
        public=True,
        grant_types=["authorization_code"],
        redirect_uris=[REDIRECT_URI],
        scope="read",
    )
    user = db.create_user(unique("once"), PASSWORD)
    _, challenge = pkce()
    request_uri = push(server, client_id, code_challenge=challenge).json()["request_uri"]
    url = server.url("/oauth2/authorize?") + str(
        httpx.QueryParams(client_id=client_id, request_uri=request_uri)
    )
    sign_in_and_consent(server, requests.Session(), url, user.username)
    again = requests.get(url, allow_redirects=False, timeout=30)
    assert again.status_code == 400 and "invalid_request_uri" in again.text
    assert "location" not in again.headers
    # read-only refusals are written in batches (OAUTH2_AUDIT_FLUSH_INTERVAL)
    refused = db.rows_eventually(
        "SELECT flags FROM oauth2_token_logs WHERE action = 'pushed_request_refused'"
        " AND client_id = :c",
        c=client_id,
    )
    assert refused and "invalid_request_uri" in str(refused[0][0])


def test_another_client_cannot_use_a_pushed_request_and_does_not_spend_it(
    server, db, unique, confidential_app
):
    """§4: the request_uri is bound to the client that pushed it."""
    client_id, secret = confidential_app
    other_id, _ = db.create_client(
        name=unique("other"), public=True, redirect_uris=[REDIRECT_URI], scope="read"
    )
    _, challenge = pkce()
    request_uri = push(server, client_id, secret, code_challenge=challenge).json()["request_uri"]
    stolen = requests.get(
        server.url("/oauth2/authorize"),
        params={"client_id": other_id, "request_uri": request_uri},
        allow_redirects=False,
        timeout=30,
    )
    assert stolen.status_code == 400 and "invalid_request_uri" in stolen.text
    own = requests.get(
        server.url("/oauth2/authorize"),
        params={"client_id": client_id, "request_uri": request_uri},
        allow_redirects=False,
        timeout=30,
    )
    assert own.status_code == 200 and 'name="username"' in own.text


@pytest.mark.parametrize(
    ("change", "error", "status"),
    [
        ({"code_challenge": ""}, "invalid_request", 400),  # PKCE required (RFC 7636, RFC 9700)
        ({"redirect_uri": "http://127.0.0.1:9/unregistered"}, "invalid_request", 400),
        ({"response_type": "token"}, "unsupported_response_type", 400),
        ({"scope": "admin"}, "invalid_scope", 400),
        ({"request_uri": URN + "x"}, "invalid_request", 400),  # §2.1
    ],
)
def test_invalid_pushed_requests_are_json_errors_and_store_nothing(
    server, db, confidential_app, change, error, status
):
    """§2.3: the same validation as the authorization endpoint, answered as JSON (never a
    redirect); nothing is stored."""
    client_id, secret = confidential_app
    _, challenge = pkce()
    response = push(server, client_id, secret, **{"code_challenge": challenge, **change})
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert "location" not in response.headers
    assert db.count("oauth2_pushed_requests", "client_id = :c", c=client_id) == 0


def test_pushing_requires_client_authentication(server, confidential_app):
    """§2: the client authenticates as at the token endpoint; a confidential client cannot
    push as a public one, and a body client_id must be the authenticated client's."""
    client_id, secret = confidential_app
    _, challenge = pkce()
    wrong = push(server, client_id, "wrong secret", code_challenge=challenge)
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    unauthenticated = push(server, client_id, code_challenge=challenge)
    assert unauthenticated.status_code in (400, 401)
    assert unauthenticated.json()["error"] == "invalid_client"
    mismatch = httpx.post(
        server.url("/oauth2/par"),
        auth=(client_id, secret),
        data={
            "client_id": "someone",
            "response_type": "code",
            "redirect_uri": REDIRECT_URI,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
        timeout=30,
    )
    assert mismatch.status_code == 400 and mismatch.json()["error"] == "invalid_request"


def test_expired_request_uri_is_refused(start_server, db, unique, confidential_app):
    """§2.2 expires_in: after it, the request_uri is invalid_request_uri."""
    live = start_server(OAUTH2_PUSHED_REQUEST_TTL="1")
    client_id, secret = confidential_app
    _, challenge = pkce()
    answer = push(live, client_id, secret, code_challenge=challenge).json()
    assert answer["expires_in"] == 1
    time.sleep(1.5)
    late = requests.get(
        live.url("/oauth2/authorize"),
        params={"client_id": client_id, "request_uri": answer["request_uri"]},
        allow_redirects=False,
        timeout=30,
    )
    assert late.status_code == 400 and "expired" in late.text
    unused = push(live, client_id, secret, code_challenge=challenge).json()
    time.sleep(1.5)
    assert db.count("oauth2_pushed_requests", "client_id = :c", c=client_id) == 1
    report = cli_json(db, "janitor", "--no-seal")  # expired, never used: deleted
    assert report["deleted"]["oauth2_pushed_requests"] >= 1, unused
    assert db.count("oauth2_pushed_requests", "client_id = :c", c=client_id) == 0


def test_require_pushed_authorization_requests(start_server, confidential_app):
    """§5: with OAUTH2_REQUIRE_PUSHED_AUTHORIZATION_REQUESTS the plain authorization request
    is refused, and metadata says so; the pushed one works."""
    live = start_server(OAUTH2_REQUIRE_PUSHED_AUTHORIZATION_REQUESTS="true")
    client_id, secret = confidential_app
    metadata = live.get("/.well-known/oauth-authorization-server").json()
    assert metadata["require_pushed_authorization_requests"] is True
    assert metadata["pushed_authorization_request_endpoint"] == live.url("/oauth2/par")
    verifier, challenge = pkce()
    plain = requests.get(
        live.url("/oauth2/authorize"),
        params={
            "client_id": client_id,
            "response_type": "code",
            "redirect_uri": REDIRECT_URI,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
        allow_redirects=False,
        timeout=30,
    )
    assert plain.status_code == 400 and "/oauth2/par" in plain.text
    request_uri = push(live, client_id, secret, code_challenge=challenge).json()["request_uri"]
    pushed = requests.get(
        live.url("/oauth2/authorize"),
        params={"client_id": client_id, "request_uri": request_uri},
        allow_redirects=False,
        timeout=30,
    )
    assert pushed.status_code == 200 and 'name="username"' in pushed.text


def test_a_client_registered_to_push_must_push(server, db, unique):
    """RFC 9126 §6 `require_pushed_authorization_requests`, set through the admin API
    (with before/after in its audit row): that client's plain authorization request is an
    error page, its pushed one works; other clients are unaffected."""
    admin = admin_api(server, db, unique)
    created = admin.post(
        "/clients",
        {
            "name": unique("must push"),
            "grant_types": ["authorization_code"],
            "redirect_uris": [REDIRECT_URI],
            "scope": "read",
        },
    )
    assert created.status_code == 201, created.text
    client_id, secret = created.json()["client_id"], created.json()["client_secret"]
    assert created.json()["require_pushed_authorization_requests"] is False
    changed = admin.patch(f"/clients/{client_id}", {"require_pushed_authorization_requests": True})
    assert changed.status_code == 200 and changed.json()["require_pushed_authorization_requests"]
    row = db.rows(
        "SELECT details FROM oauth2_token_logs WHERE action = 'admin_client_updated'"
        " AND client_id = :a ORDER BY id DESC",
        a=admin.client_id,
    )[0][0]
    details = row if isinstance(row, dict) else json.loads(row)
    assert details["before"] == {"require_pushed_authorization_requests": False}
    assert details["changes"] == {"require_pushed_authorization_requests": True}
    _, challenge = pkce()
    plain = requests.get(
        server.url("/oauth2/authorize"),
        params={
            "client_id": client_id,
            "response_type": "code",
            "redirect_uri": REDIRECT_URI,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
        allow_redirects=False,
        timeout=30,
    )
    assert plain.status_code == 400 and "/oauth2/par" in plain.text
    assert "location" not in plain.headers
    request_uri = push(server, client_id, secret, code_challenge=challenge).json()["request_uri"]
    pushed = requests.get(
        server.url("/oauth2/authorize"),
        params={"client_id": client_id, "request_uri": request_uri},
        allow_redirects=False,
        timeout=30,
    )
    assert pushed.status_code == 200 and 'name="username"' in pushed.text
