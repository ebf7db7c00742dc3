"""Authorization code + PKCE S256 (RFC 6749 §4.1, RFC 7636, RFC 9207) through real pages,
driven by requests-oauthlib (not Authlib)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from urllib.parse import urlencode

import jwt
import pytest
import requests
from oauthlib.oauth2.rfc6749.errors import InvalidGrantError

from oauth2_server.audit.risk import RACE_WINDOW
from tests.flows import REDIRECT_URI, authorize_with_pkce, exchange_code, query_of

PASSWORD = "correct horse battery"


@pytest.fixture
def app_client(db, unique):
    """A public PKCE client, a confidential web client and a user."""
    public_id, _ = db.create_client(
        name="mobile app",
        public=True,
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI],
        scope="read write",
    )
    web_id, web_secret = db.create_client(
        name="web app",
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI, "https://app.example.com/cb"],
        scope="read write",
    )
    user = db.create_user(unique("alice"), PASSWORD)
    return {"public": public_id, "web": (web_id, web_secret), "user": user}


def challenge_for(verifier: str) -> str:
    return (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )


def test_public_client_gets_tokens_with_pkce_and_iss(server, db, app_client):
    """RFC 7636 §4; RFC 9207 §2: the redirect carries `iss`."""
    user = app_client["user"]
    result = authorize_with_pkce(
        server.base_url, app_client["public"], user.username, PASSWORD, scope="read"
    )
    params = result.params
    assert params["iss"] == server.base_url
    assert params["state"] == result.oauth._state
    assert (
        db.count(
            "oauth2_authorization_codes",
            "code_hash = :h",
            h=hashlib.sha256(params["code"].encode()).hexdigest(),
        )
        == 1
    )
    token = exchange_code(server.base_url, result)
    assert token["scope"] == ["read"]
    claims = jwt.decode(token["access_token"], options={"verify_signature": False})
    assert claims["sub"] == user.subject
    assert len(token["refresh_token"]) >= 43  # 256 bits, base64url


def test_confidential_client_authenticates_at_token_endpoint(server, app_client):
    web_id, web_secret = app_client["web"]
    user = app_client["user"]
    result = authorize_with_pkce(
        server.base_url, web_id, user.username, PASSWORD, redirect_uri=REDIRECT_URI
    )
    token = exchange_code(server.base_url, result, client_secret=web_secret)
    assert token["token_type"] == "Bearer"
    # Without its secret, a confidential client cannot redeem through `none`.
    again = authorize_with_pkce(
        server.base_url, web_id, user.username, PASSWORD, browser=result.browser
    )
    response = server.post(
        "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": again.params["code"],
            "client_id": web_id,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": again.oauth._code_verifier,
        },
    )
    assert response.status_code in (400, 401)
    assert response.json()["error"] == "invalid_client"


def test_consent_is_remembered_per_client_and_scope(server, app_client):
    user = app_client["user"]
    first = authorize_with_pkce(
        server.base_url, app_client["public"], user.username, PASSWORD, scope="read"
    )
    # Same browser, same scope: no consent page, straight back with a code.
    url = first.oauth.authorization_url(server.url("/oauth2/authorize"))[0]
    again = first.browser.get(url, allow_redirects=False, timeout=10)
    assert again.status_code == 302 and "code" in query_of(again.headers["location"])
    # A wider scope asks again.
    from tests.flows import oauth_session

    wider = oauth_session(app_client["public"], "read write")
    page = first.browser.get(
        wider.authorization_url(server.url("/oauth2/authorize"))[0],
        allow_redirects=False,
        timeout=10,
    )
    assert page.status_code == 200 and 'name="decision"' in page.text


def test_prompt_consent_asks_again_despite_a_remembered_consent(server, db, app_client):
    """OpenID Connect Core §3.1.2.1 `prompt=consent` (which this server honours): the
    consent page is shown even when the user already consented to these scopes, and no
    code is issued until the user decides again."""
    user = app_client["user"]
    client_id = app_client["public"]
    first = authorize_with_pkce(server.base_url, client_id, user.username, PASSWORD)
    assert "code" in first.params
    codes = db.count("oauth2_authorization_codes", "client_id = :c", c=client_id)
    url = first.oauth.authorization_url(server.url("/oauth2/authorize"), prompt="consent")[0]
    page = first.browser.get(url, allow_redirects=False, timeout=10)
    assert page.status_code == 200 and 'name="decision"' in page.text, page.status_code
    assert db.count("oauth2_authorization_codes", "client_id = :c", c=client_id) == codes
    again = authorize_with_pkce(
        server.base_url, client_id, user.username, PASSWORD, browser=first.browser
    )
    assert "code" in again.params  # without prompt=consent: remembered, straight back


def test_denied_consent_redirects_with_access_denied(server, db, app_client):
    before = db.count("oauth2_authorization_codes")
    result = authorize_with_pkce(
        server.base_url, app_client["public"], app_client["user"].username, PASSWORD, approve=False
    )
    assert result.params["error"] == "access_denied"
    assert result.params["iss"] == server.base_url
    assert db.count("oauth2_authorization_codes") == before


def _authorize_url(server, client_id, **overrides):
    verifier = secrets.token_urlsafe(48)
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "scope": "read",
        "state": "xyz",
        "code_challenge": challenge_for(verifier),
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    params = {k: v for k, v in params.items() if v is not None}
    return server.url("/oauth2/authorize?" + urlencode(params))


@pytest.mark.parametrize(
    ("overrides", "description"),
    [
        ({"code_challenge": None, "code_challenge_method": None}, "code_challenge"),
        ({"code_challenge_method": "plain"}, "plain"),
        ({"code_challenge_method": None}, "S256"),
        ({"scope": "read admin"}, None),
    ],
    ids=["missing-pkce", "plain-pkce", "omitted-method", "unknown-scope"],
)
def test_bad_authorization_request_redirects_error_and_issues_nothing(
    server, db, app_client, overrides, description
):
    """RFC 7636 §4.4.1, RFC 6749 §4.1.2.1: errors after redirect_uri validation go back to
    the client with `error`, `state` and `iss`; no code is stored."""
    before = db.count("oauth2_authorization_codes")
    response = requests.get(
        _authorize_url(server, app_client["public"], **overrides), allow_redirects=False, timeout=10
    )
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(REDIRECT_URI)
    params = query_of(location)
    expected = "invalid_scope" if "scope" in overrides else "invalid_request"
    assert params["error"] == expected
    assert params["state"] == "xyz" and params["iss"] == server.base_url
    if description:
        assert description in params["error_description"]
    assert db.count("oauth2_authorization_codes") == before


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://127.0.0.1:9/other",
        "http://127.0.0.1:9/callback/",
        "https://evil.example/cb",
        REDIRECT_URI + "?x=1",
    ],
)
def test_unregistered_redirect_uri_is_never_redirected_to(server, db, app_client, redirect_uri):
    """RFC 9700 §4.1.3: exact match; an unregistered URI gets an error page, no redirect."""
    response = requests.get(
        _authorize_url(server, app_client["public"], redirect_uri=redirect_uri),
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "invalid_request" in response.text
    assert response.headers["x-frame-options"] == "DENY"


def test_unknown_client_gets_error_page(server):
    response = requests.get(
        _authorize_url(server, "no-such-client"), allow_redirects=False, timeout=10
    )
    assert response.status_code == 400 and "location" not in response.headers
    assert "invalid_client" in response.text


def test_wrong_code_verifier_fails_and_code_stays_unused(server, db, app_client):
    """RFC 7636 §4.6: a wrong verifier is invalid_grant and changes nothing."""
    result = authorize_with_pkce(
        server.base_url, app_client["public"], app_client["user"].username, PASSWORD
    )
    code = result.params["code"]
    tokens_before = db.count("oauth2_access_tokens")
    for verifier, error in (
        (secrets.token_urlsafe(48), "invalid_grant"),
        (None, "invalid_request"),
    ):
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": app_client["public"],
        }
        if verifier:
            data["code_verifier"] = verifier
        response = server.post("/oauth2/token", data=data)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == error
    assert db.count("oauth2_access_tokens") == tokens_before
    digest = hashlib.sha256(code.encode()).hexdigest()
    assert (
        db.scalar(
            "SELECT consumed_at FROM oauth2_authorization_codes WHERE code_hash = :h", h=digest
        )
        is None
    )
    # The rightful holder can still redeem it.
    assert "access_token" in exchange_code(server.base_url, result)


def test_mismatched_redirect_uri_at_token_endpoint_fails(server, db, app_client):
    web_id, web_secret = app_client["web"]
    result = authorize_with_pkce(server.base_url, web_id, app_client["user"].username, PASSWORD)
    before = db.count("oauth2_access_tokens")
    response = server.post(
        "/oauth2/token",
        auth=(web_id, web_secret),
        data={
            "grant_type": "authorization_code",
            "code": result.params["code"],
            "redirect_uri": "https://app.example.com/cb",
            "code_verifier": result.oauth._code_verifier,
        },
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert db.count("oauth2_access_tokens") == before


def test_code_replay_fails_and_revokes_tokens_issued_from_it(server, db, app_client):
    """RFC 6749 §4.1.2 / DESIGN invariant 4."""
    result = authorize_with_pkce(
        server.base_url, app_client["public"], app_client["user"].username, PASSWORD
    )
    token = exchange_code(server.base_url, result)
    time.sleep(RACE_WINDOW + 0.2)  # a replay scores 1.00; within 1 s it is a `race`
    with pytest.raises(InvalidGrantError):
        exchange_code(server.base_url, result)
    public_id = app_client["public"]
    introspector, secret = db.create_client(scope="introspect")
    for value in (token["access_token"], token["refresh_token"]):
        answer = server.post(
            "/oauth2/introspect", auth=(introspector, secret), data={"token": value}
        ).json()
        assert answer == {"active": False}
    refreshed = server.post(
        "/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": token["refresh_token"],
            "client_id": public_id,
        },
    )
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    rows = db.rows(
        "SELECT risk_score, flags FROM oauth2_token_logs WHERE action = 'code_replay' "
        "AND client_id = :c",
        c=public_id,
    )
    assert len(rows) == 1 and float(rows[0][0]) == 1.0


def test_expired_code_is_invalid_grant(start_server, db, app_client):
    live = start_server(OAUTH2_AUTHORIZATION_CODE_TTL="1")
    result = authorize_with_pkce(
        live.base_url, app_client["public"], app_client["user"].username, PASSWORD
    )
    time.sleep(1.5)
    before = db.count("oauth2_access_tokens")
    with pytest.raises(InvalidGrantError):
        exchange_code(live.base_url, result)
    assert db.count("oauth2_access_tokens") == before


def test_login_with_wrong_password_is_refused_and_audited(server, db, app_client):
    from tests.flows import form_fields, oauth_session

    oauth = oauth_session(app_client["public"], "read")
    browser = requests.Session()
    page = browser.get(oauth.authorization_url(server.url("/oauth2/authorize"))[0], timeout=10)
    action, fields = form_fields(page.text)
    fields.update(username=app_client["user"].username, password="wrong password")
    response = browser.post(server.url(action), data=fields, allow_redirects=False, timeout=10)
    assert response.status_code == 401 and "Wrong username or password" in response.text
    # Still signed out: the authorization request shows the login page again.
    again = browser.get(oauth.authorization_url(server.url("/oauth2/authorize"))[0], timeout=10)
    assert again.status_code == 200 and 'name="password"' in again.text
    user = app_client["user"]
    deadline = time.monotonic() + 5  # read-only events are written in batches (0.2 s here)
    while time.monotonic() < deadline and not db.count(
        "oauth2_token_logs", "action = 'login_failed' AND subject = :s", s=user.subject
    ):
        time.sleep(0.1)
    assert (
        db.count("oauth2_token_logs", "action = 'login_failed' AND subject = :s", s=user.subject)
        == 1
    )


def test_login_form_without_csrf_token_is_refused(server, db, app_client):
    """DESIGN invariant 7: forms carry CSRF tokens bound to the session."""
    from tests.flows import form_fields, oauth_session

    oauth = oauth_session(app_client["public"], "read")
    browser = requests.Session()
    page = browser.get(oauth.authorization_url(server.url("/oauth2/authorize"))[0], timeout=10)
    action, fields = form_fields(page.text)
    fields.update(username=app_client["user"].username, password=PASSWORD, csrf_token="forged")
    response = browser.post(server.url(action), data=fields, allow_redirects=False, timeout=10)
    assert response.status_code == 400
    assert "location" not in response.headers
    # A fresh browser (no session cookie) with the page's token is refused too.
    stranger = requests.post(
        server.url(action), data={**fields, "csrf_token": "x"}, allow_redirects=False, timeout=10
    )
    assert stranger.status_code == 400


def test_pages_forbid_framing_and_cookie_is_httponly_lax(server, app_client):
    """DESIGN invariant 7; RFC 9700 §4.16 clickjacking."""
    from tests.flows import oauth_session

    oauth = oauth_session(app_client["public"], "read")
    page = requests.get(oauth.authorization_url(server.url("/oauth2/authorize"))[0], timeout=10)
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert "secure" not in cookie  # development over http; production sets Secure
