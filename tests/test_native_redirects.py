"""Native-app redirect URIs (RFC 8252 §7): private-use reverse-domain schemes (§7.1),
claimed https URIs (§7.2) and loopback IP literals with any port at request time (§7.3);
anything else is refused at registration, naming the URI and the rule, and changes
nothing."""

from __future__ import annotations

import pytest
import requests

from tests.admin_helpers import PASSWORD, admin_api, assert_error, run_cli
from tests.conftest import free_port
from tests.flows import authorize_with_pkce, exchange_code, query_of

NATIVE = "com.example.app:/oauth/callback"


@pytest.fixture
def admin(server, db, unique):
    return admin_api(server, db, unique)


def native_client(db, unique, *uris: str) -> str:
    client_id, _ = db.create_client(
        name=unique("native"),
        public=True,
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=list(uris),
        scope="read",
    )
    return client_id


@pytest.mark.parametrize(
    "uri",
    [
        NATIVE,
        "com.example.app://oauth/callback",
        "http://127.0.0.1/cb",
        "http://127.0.0.1:8080/cb",
        "http://[::1]/cb",
        "https://app.example.com/oauth/callback",
    ],
)
def test_native_redirect_uris_are_accepted(admin, unique, uri):
    response = admin.post(
        "/clients",
        {
            "name": unique("native"),
            "public": True,
            "grant_types": ["authorization_code"],
            "redirect_uris": [uri],
        },
    )
    assert response.status_code == 201, response.text
    assert response.json()["redirect_uris"] == [uri]


REFUSED = {
    "http://example.com/cb": "must use https",
    "http://localhost:8080/cb": "localhost is not accepted",
    "http://127.0.0.1.example.com/cb": "must use https",
    "myapp:/cb": "reverse-domain",
    "javascript:alert(1)": "reverse-domain",
    "data:text/html,hi": "reverse-domain",
    "https://app.example.com/cb#frag": "fragment",
    "com.example.app:": "needs a path",
    "https://user@app.example.com/cb": "user information",
    "/relative/cb": "scheme",
    "https://app.example.com/c b": "visible ASCII",
}


@pytest.mark.parametrize("uri", list(REFUSED))
def test_other_redirect_uris_are_refused_naming_uri_and_rule(admin, db, unique, uri):
    before = db.count("oauth2_clients")
    response = admin.post(
        "/clients",
        {
            "name": unique("bad"),
            "public": True,
            "grant_types": ["authorization_code"],
            "redirect_uris": [uri],
        },
    )
    body = assert_error(response, 400, "redirect_uris")
    assert uri in body["error_description"] and REFUSED[uri] in body["error_description"]
    assert db.count("oauth2_clients") == before


@pytest.mark.parametrize("uri", ["myapp:/cb", "http://localhost/cb"])
def test_cli_refuses_them_too(db, unique, uri):
    before = db.count("oauth2_clients")
    result = run_cli(
        db,
        "clients",
        "create",
        "--name",
        unique("cli"),
        "--public",
        "--grant-type",
        "authorization_code",
        "--redirect-uri",
        uri,
    )
    assert result.returncode != 0 and uri in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert db.count("oauth2_clients") == before


def test_private_use_scheme_flow_end_to_end(server, db, unique):
    """RFC 8252 §7.1: the code comes back on `com.example.app:/oauth/callback` and is
    redeemed with that redirect_uri."""
    client_id = native_client(db, unique, NATIVE)
    user = db.create_user(unique("nina"), PASSWORD)
    result = authorize_with_pkce(
        server.base_url, client_id, user.username, PASSWORD, redirect_uri=NATIVE
    )
    assert result.location.startswith(NATIVE + "?"), result.location
    assert result.params["iss"] == server.base_url
    token = exchange_code(server.base_url, result)
    assert token["access_token"] and token["refresh_token"]


@pytest.mark.parametrize(
    "registered, host",
    [
        ("http://127.0.0.1/cb", "127.0.0.1"),
        ("http://127.0.0.1:8080/cb", "127.0.0.1"),
        ("http://[::1]/cb", "[::1]"),
    ],
)
def test_loopback_redirect_accepts_any_port(server, db, unique, registered, host):
    """RFC 8252 §7.3: "The authorization server MUST allow any port to be specified at the
    time of the request for loopback IP redirect URIs"; the code exchange repeats the
    port-specific URI (RFC 6749 §4.1.3)."""
    client_id = native_client(db, unique, registered)
    user = db.create_user(unique("lou"), PASSWORD)
    redirect_uri = f"http://{host}:{free_port()}/cb"
    result = authorize_with_pkce(
        server.base_url, client_id, user.username, PASSWORD, redirect_uri=redirect_uri
    )
    assert result.location.startswith(redirect_uri + "?"), result.location
    token = exchange_code(server.base_url, result)
    assert token["access_token"]


def _authorize(server, client_id: str, redirect_uri: str) -> requests.Response:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
        "state": "s",
    }
    return requests.get(
        server.url("/oauth2/authorize"), params=params, allow_redirects=False, timeout=30
    )


@pytest.mark.parametrize(
    "registered, requested",
    [
        ("http://127.0.0.1/cb", "http://127.0.0.1:5000/other"),  # path differs
        ("http://127.0.0.1/cb", "http://127.0.0.1:5000/cb?x=1"),  # query differs
        ("http://127.0.0.1/cb", "http://localhost:5000/cb"),  # not a loopback IP literal
        ("http://127.0.0.1/cb", "http://[::1]:5000/cb"),  # another loopback literal
        ("http://127.0.0.1/cb", "https://127.0.0.1:5000/cb"),  # another scheme
        ("http://127.0.0.1/cb", "http://127.0.0.1:99999/cb"),  # not a port
        ("https://app.example.com/cb", "https://app.example.com:8443/cb"),  # not loopback
        (NATIVE, "com.example.app:/oauth/other"),
    ],
)
def test_everything_but_the_loopback_port_still_matches_exactly(
    server, db, unique, registered, requested
):
    """RFC 9700 §4.1.3: exact matching stays the rule; an unregistered URI gets an error
    page and no redirect."""
    client_id = native_client(db, unique, registered)
    response = _authorize(server, client_id, requested)
    assert response.status_code == 400, response.text
    assert "location" not in response.headers


def test_code_exchange_must_repeat_the_port_used(server, db, unique):
    client_id = native_client(db, unique, "http://127.0.0.1/cb")
    user = db.create_user(unique("pat"), PASSWORD)
    port = free_port()
    result = authorize_with_pkce(
        server.base_url,
        client_id,
        user.username,
        PASSWORD,
        redirect_uri=f"http://127.0.0.1:{port}/cb",
    )
    before = db.count("oauth2_access_tokens")
    response = server.post(
        "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "client_id": client_id,
            "code": query_of(result.location)["code"],
            "redirect_uri": f"http://127.0.0.1:{port + 1}/cb",
            "code_verifier": result.oauth._code_verifier,
        },
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert db.count("oauth2_access_tokens") == before
