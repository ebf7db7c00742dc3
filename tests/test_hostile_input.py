"""Zero 5xx from input (issue #8 item 3; DESIGN.md invariant 8): hostile requests get their
RFC error as JSON (the authorization endpoint: an HTML error page, never a redirect to an
unverified URI), never a 500, a traceback or a `text/plain` answer.

Each case below answered an unhandled 500 with a 60-200-line traceback before: a NUL in a
form value or an admin string (PostgreSQL refuses NUL), a JWT header whose `typ` is not a
string, a `redirect_uri` Authlib cannot quote in an error description, Starlette's plain
404/405. The module's own live server logs at INFO so its log can be checked for
tracebacks at the end; a seeded random run over the OAuth endpoints (bench/fuzz_oauth.py,
small here) closes the module.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from bench.fuzz_oauth import FuzzTarget, run_fuzz
from oauth2_server.web import errors
from tests.conftest import LiveServer, start_live_server
from tests.fake_google import exchange, exchange_client
from tests.flows import REDIRECT_URI, form_fields

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def hostile(database: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A live server of this module's own, logging at INFO (its log must stay clean)."""
    live = start_live_server(database, tmp_path_factory.mktemp("hostile"), OAUTH2_LOG_LEVEL="info")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def clients(hostile: LiveServer) -> dict[str, Any]:
    """A web client (code flow) and an admin client with its bearer token."""
    db = hostile.db
    web_id, web_secret = db.create_client(
        grant_types=["authorization_code", "client_credentials"],
        redirect_uris=[REDIRECT_URI],
        scope="read",
    )
    admin_id, admin_secret = db.create_client(scope="admin")
    admin_token = hostile.client_credentials_token(admin_id, admin_secret, scope="admin")
    return {
        "web": (web_id, web_secret),
        "admin": (admin_id, admin_secret),
        "bearer": {"Authorization": f"Bearer {admin_token}"},
    }


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def odd_header_jwt(**header: Any) -> str:
    """A three-part token whose header members have the given (hostile) JSON values."""
    return f"{b64({'alg': 'ES256', 'kid': 'k', **header})}.{b64({'sub': 'x'})}.c2ln"


def assert_json_error(response: requests.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert body["error"] == error, body
    assert "Traceback" not in response.text
    return body


def assert_error_page(response: requests.Response, status: int = 400) -> None:
    """RFC 6749 §4.1.2.1: an error page, no redirect."""
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("text/html")
    assert "location" not in response.headers


# -- NUL and control characters in forms (RFC 6749 Appendix A) -------------------------


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/oauth2/token", "scope"),
        ("/oauth2/token", "grant_type"),
        ("/oauth2/introspect", "token"),
        ("/oauth2/revoke", "token_type_hint"),
    ],
)
def test_control_character_in_a_form_value_is_invalid_request(hostile, clients, path, field):
    """No OAuth parameter holds a control character; NUL cannot even be stored."""
    client_id, secret = clients["web"]
    data = {"grant_type": "client_credentials", "token": "abc", field: "a\x00b"}
    response = hostile.post(path, data=data, auth=(client_id, secret))
    body = assert_json_error(response, 400, "invalid_request")
    assert field in body["error_description"]
    tab = hostile.post(path, data={**data, field: "a\tb"}, auth=(client_id, secret))
    assert_json_error(tab, 400, "invalid_request")


def test_nul_in_the_login_username_is_a_400_page(hostile, clients, unique):
    """The login form (RFC 6749 §4.1.1 is silent on how users authenticate): a NUL in the
    username is refused before it reaches a query, and no user is signed in."""
    hostile.db.create_user(unique("nul-user"), PASSWORD)
    client_id, _ = clients["web"]
    browser = requests.Session()
    page = browser.get(
        hostile.url("/oauth2/authorize"),
        params={
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "scope": "read",
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256",
        },
        timeout=30,
    )
    assert page.status_code == 200, page.text[:300]
    action, fields = form_fields(page.text)
    fields.update(username="alice\x00", password=PASSWORD)
    response = browser.post(hostile.url(action), data=fields, allow_redirects=False, timeout=30)
    assert_error_page(response, 400)
    assert "control character" in response.text


# -- JWT headers are attacker-controlled JSON (RFC 7515 §4, RFC 9068 §4) ------------------


@pytest.mark.parametrize("typ", [5, None, ["at+jwt"], {"a": 1}, True])
def test_jwt_header_typ_that_is_not_a_string_is_just_an_invalid_token(hostile, clients, typ):
    """Introspection: inactive (RFC 7662 §2.2); revocation: 200 (RFC 7009 §2.2); admin
    bearer: 401 invalid_token (RFC 6750 §3.1); token exchange: invalid_request (RFC 8693
    §2.2.2)."""
    token = odd_header_jwt(typ=typ)
    client_id, secret = clients["web"]
    introspected = hostile.post(
        "/oauth2/introspect", data={"token": token}, auth=(client_id, secret)
    )
    assert introspected.status_code == 200, introspected.text
    assert introspected.json() == {"active": False}
    revoked = hostile.post("/oauth2/revoke", data={"token": token}, auth=(client_id, secret))
    assert revoked.status_code == 200, revoked.text
    admin = hostile.get("/admin/clients", headers={"Authorization": f"Bearer {token}"})
    assert_json_error(admin, 401, "invalid_token")
    ex_id, ex_secret = exchange_client(hostile.db, [])
    exchanged = exchange(hostile, ex_id, ex_secret, token, "any-branch")
    assert_json_error(exchanged, 400, "invalid_request")


def test_jwt_header_kid_that_is_not_a_string_is_an_invalid_token(hostile, clients):
    client_id, secret = clients["web"]
    for kid in ([1], {"k": "v"}, 7):
        token = odd_header_jwt(typ="at+jwt", kid=kid)
        response = hostile.post(
            "/oauth2/introspect", data={"token": token}, auth=(client_id, secret)
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"active": False}


# -- the authorization endpoint (RFC 6749 §4.1.2.1) -------------------------------------


@pytest.mark.parametrize(
    "bad", ["http://127.0.0.1:9/c\\b", 'http://127.0.0.1:9/"', "http://127.0.0.1:9/é"]
)
def test_redirect_uri_that_is_not_a_uri_gets_the_error_page(hostile, clients, bad):
    """A `redirect_uri` with `\\`, `"` or a non-ASCII character is not a URI (RFC 3986), so
    it cannot be registered: error page, no redirect (RFC 9700 §4.1.3)."""
    client_id, _ = clients["web"]
    for method in ("GET", "POST"):
        response = requests.request(
            method,
            hostile.url("/oauth2/authorize"),
            params={"response_type": "code", "client_id": client_id, "redirect_uri": bad},
            data={"action": "consent"} if method == "POST" else None,
            allow_redirects=False,
            timeout=30,
        )
        assert_error_page(response, 400)
        assert "redirect_uri" in response.text


def test_other_parameters_with_such_characters_never_500(hostile, clients):
    """With a registered redirect URI, odd `state`, `scope` and `response_type` values get
    a page or a redirect to that URI: a 4xx or 3xx, never a 5xx."""
    client_id, _ = clients["web"]
    base = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT_URI}
    for extra in (
        {"state": '"é\\'},
        {"scope": '"é\\'},
        {"response_type": 'co"de'},
        {"response_type": "cödé"},
        {"code_challenge": "é" * 50, "code_challenge_method": "S256"},
        {"code_challenge_method": '"'},
    ):
        response = hostile.get("/oauth2/authorize", params={**base, **extra}, allow_redirects=False)
        assert response.status_code < 500, (extra, response.status_code, response.text[:300])
        location = response.headers.get("location")
        if location is not None:
            assert location.startswith(REDIRECT_URI), location


# -- 404 and 405 (Starlette's own errors) --------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/oauth2/nope", 404),
        ("POST", "/admin/nope", 404),
        ("PUT", "/oauth2/jwks", 405),
        ("DELETE", "/.well-known/oauth-authorization-server", 405),
        ("PUT", "/oauth2/token", 405),
        ("PUT", "/admin/clients", 405),
        ("DELETE", "/admin/openapi.json", 405),
    ],
)
def test_unknown_path_or_method_answers_json(hostile, method, path, status):
    """DESIGN.md invariant 8: not `text/plain`; 405 carries `Allow` (RFC 9110 §15.5.6)."""
    response = requests.request(method, hostile.url(path), timeout=30)
    body = assert_json_error(response, status, "not_found" if status == 404 else "invalid_request")
    assert body["error_description"]
    if status == 405:
        assert response.headers["allow"]
    assert response.headers["x-request-id"]


# -- the admin API refuses control characters, naming the field --------------------------


def test_admin_refuses_control_characters_naming_the_field(hostile, clients, unique):
    bearer = clients["bearer"]
    cases = [
        ({"name": "a\x00b"}, "name"),
        ({"name": unique("ok"), "redirect_uris": ["https://ex.example/\x00"]}, "redirect_uris"),
        ({"name": unique("ok"), "scope": "read\x07"}, "scope"),
    ]
    for body, field in cases:
        response = hostile.post("/admin/clients", json=body, headers=bearer)
        answer = assert_json_error(response, 400, "invalid_request")
        assert answer["field"] == field, answer
    # A JSON escape for a lone surrogate cannot be stored as UTF-8 either.
    raw = '{"name": "a\\ud800b"}'
    response = hostile.post(
        "/admin/clients",
        data=raw,
        headers={**bearer, "Content-Type": "application/json"},
    )
    assert assert_json_error(response, 400, "invalid_request")["field"] == "name"
    # Path and query parameters are named too.
    path = hostile.get("/admin/clients/a%00b", headers=bearer)
    assert assert_json_error(path, 400, "invalid_request")["field"] == "client_id"
    query = hostile.get("/admin/audit?client_id=a%00b", headers=bearer)
    assert assert_json_error(query, 400, "invalid_request")["field"] == "client_id"
    assert hostile.db.count("oauth2_clients", "name LIKE 'a%b'") == 0


def test_admin_paging_limit_takes_ascii_digits_only(hostile, clients):
    """`str.isdigit()` accepts '³', which `int()` refuses: a 400 naming `limit`."""
    for path in ("/admin/clients", "/admin/audit"):
        for limit in ("%C2%B3", "9" * 5000):
            response = hostile.get(f"{path}?limit={limit}", headers=clients["bearer"])
            assert assert_json_error(response, 400, "invalid_request")["field"] == "limit"


def test_admin_duplicate_non_ascii_username_is_a_conflict(hostile, clients, unique):
    """SQLite's lower() folds ASCII only: an exact duplicate of a non-ASCII username must
    still be a 409 naming `username`, never the unique index's 500."""
    bearer = clients["bearer"]
    name = unique("ÒSCAR")
    body = {"username": name, "password": PASSWORD}
    first = hostile.post("/admin/users", json=body, headers=bearer)
    assert first.status_code == 201, first.text
    again = hostile.post("/admin/users", json=body, headers=bearer)
    assert assert_json_error(again, 409, "conflict")["field"] == "username"
    other = hostile.post("/admin/users", json={**body, "username": unique("other")}, headers=bearer)
    renamed = requests.patch(
        hostile.url(f"/admin/users/{other.json()['subject']}"),
        json={"username": name},
        headers=bearer,
        timeout=30,
    )
    assert assert_json_error(renamed, 409, "conflict")["field"] == "username"


# -- the last resort -------------------------------------------------------------------


def test_last_resort_answers_json_500_and_logs_one_line(caplog):
    """An exception no handler took: `server_error` JSON without details, one ERROR line
    with the exception class and route, the traceback only at DEBUG."""

    async def broken(request: Any) -> Any:
        raise KeyError("secret detail")

    app = Starlette(
        routes=[Route("/broken", broken)],
        middleware=[Middleware(errors.LastResort, handler=errors.unhandled)],
    )
    caplog.set_level(logging.INFO, logger="oauth2_server.errors")

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/broken")

    response = asyncio.run(call())
    assert response.status_code == 500
    assert response.json()["error"] == "server_error"
    assert "secret detail" not in response.text
    lines = [r for r in caplog.records if r.name == "oauth2_server.errors"]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR
    assert "KeyError" in lines[0].getMessage() and "/broken" in lines[0].getMessage()
    assert lines[0].exc_info is None


# -- seeded random input over the OAuth endpoints (bench/fuzz_oauth.py) --------------------


def test_random_hostile_requests_get_no_5xx(hostile, clients):
    """A small, seeded run of bench/fuzz_oauth.py: NUL, non-UTF-8 bytes, huge and repeated
    parameters, odd content types and credentials at every OAuth endpoint."""
    web_id, web_secret = clients["web"]
    target = FuzzTarget(hostile.base_url, web_id, web_secret, REDIRECT_URI)
    report = run_fuzz(target, count=250, seed=8)
    assert report.failures == [], report.summary()


def test_the_server_log_has_no_traceback(hostile, clients):
    """Runs last in this module: nothing above wrote a traceback or answered a 5xx."""
    log = hostile.log()
    assert "Traceback" not in log, log[-3000:]
    assert '" 500' not in log
