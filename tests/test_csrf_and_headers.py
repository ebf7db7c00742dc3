"""The browser-facing defences of DESIGN.md invariant 7, each checked where it can fail:
the consent form's CSRF token (RFC 9700 §4.7, RFC 6749 §10.12), `Referrer-Policy:
no-referrer` on every kind of answer (RFC 9700 §4.2), and the cookie flags a production
deployment sets (`Secure`, `HttpOnly`, `SameSite=Lax`).

The login form's CSRF check is tested in test_authorization_code.py; here the consent POST,
which reaches `AuthorizationFlow.finish` and issues a code, is tested on its own.
"""

from __future__ import annotations

from http.cookies import SimpleCookie

import pytest
import requests

from tests.flows import REDIRECT_URI, form_fields, login, oauth_session, query_of

PASSWORD = "correct horse battery"


@pytest.fixture
def public_client(db, unique):
    """A public PKCE client and a user."""
    client_id, _ = db.create_client(
        name="csrf app",
        public=True,
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI],
        scope="read write",
    )
    return client_id, db.create_user(unique("carol"), PASSWORD)


def consent_page(server, client_id, username) -> tuple[requests.Session, str, requests.Response]:
    """Sign in in a fresh browser and stop at the consent page: (browser, url, page)."""
    url = oauth_session(client_id, "read").authorization_url(server.url("/oauth2/authorize"))[0]
    browser = requests.Session()
    page = browser.get(url, allow_redirects=False, timeout=30)
    signed_in = login(browser, server.base_url, page, username, PASSWORD)
    assert signed_in.status_code == 303, signed_in.text
    page = browser.get(server.url(signed_in.headers["location"]), allow_redirects=False, timeout=30)
    assert page.status_code == 200 and 'name="decision"' in page.text, page.text[:300]
    return browser, url, page


@pytest.mark.parametrize("token", ["forged", "", None])
def test_consent_post_without_the_sessions_csrf_token_is_refused(server, db, public_client, token):
    """A consent POST whose CSRF token is wrong, empty or missing (a cross-site form
    riding the user's session cookie) is refused with 400: no redirect, no code, and the
    consent is not remembered. The page's own token then still works."""
    client_id, user = public_client
    browser, url, page = consent_page(server, client_id, user.username)
    action, fields = form_fields(page.text)
    fields["decision"] = "approve"
    forged = dict(fields)
    if token is None:
        del forged["csrf_token"]
    else:
        forged["csrf_token"] = token
    codes = db.count("oauth2_authorization_codes", "client_id = :c", c=client_id)

    refused = browser.post(server.url(action), data=forged, allow_redirects=False, timeout=30)

    assert refused.status_code == 400, refused.text[:300]
    assert "location" not in refused.headers
    assert db.count("oauth2_authorization_codes", "client_id = :c", c=client_id) == codes
    assert db.count("oauth2_consents", "client_id = :c", c=client_id) == 0
    again = browser.get(url, allow_redirects=False, timeout=30)
    assert again.status_code == 200 and 'name="decision"' in again.text  # still asks

    approved = browser.post(server.url(action), data=fields, allow_redirects=False, timeout=30)
    assert approved.status_code == 302 and "code" in query_of(approved.headers["location"])


def test_every_response_carries_referrer_policy_no_referrer(server, public_client):
    """RFC 9700 §4.2: no page or answer may leak its URL (which can hold a code or
    `state`) through the Referer header: HTML pages, JSON answers, errors and redirects."""
    client_id, user = public_client
    url = oauth_session(client_id, "read").authorization_url(server.url("/oauth2/authorize"))[0]
    answers = {
        "login page": requests.get(url, allow_redirects=False, timeout=30),
        "error page": server.get("/oauth2/authorize?client_id=nobody&response_type=code"),
        "metadata": server.get("/.well-known/oauth-authorization-server"),
        "token error": server.post("/oauth2/token", data={"grant_type": "client_credentials"}),
        "not found": server.get("/no/such/path"),
        "health": server.get("/healthz"),
    }
    browser, _, page = consent_page(server, client_id, user.username)
    action, fields = form_fields(page.text)
    answers["code redirect"] = browser.post(
        server.url(action),
        data={**fields, "decision": "approve"},
        allow_redirects=False,
        timeout=30,
    )
    assert answers["code redirect"].status_code == 302
    for name, response in answers.items():
        assert response.headers.get("referrer-policy") == "no-referrer", (name, response.headers)


def set_cookies(response: requests.Response) -> dict[str, SimpleCookie]:
    """Each Set-Cookie header of a response, parsed, by cookie name."""
    cookies: dict[str, SimpleCookie] = {}
    for header in response.raw.headers.getlist("set-cookie"):
        cookie = SimpleCookie()
        cookie.load(header)
        for name in cookie:
            cookies[name] = cookie
    return cookies


def assert_flags(cookie: SimpleCookie, name: str) -> None:
    morsel = cookie[name]
    assert morsel["secure"] is True, f"{name} lacks Secure: {morsel.OutputString()}"
    assert morsel["httponly"] is True, f"{name} lacks HttpOnly: {morsel.OutputString()}"
    assert morsel["samesite"].lower() == "lax", morsel.OutputString()


def test_production_cookies_are_secure_httponly_lax(start_server, db, public_client):
    """DESIGN.md invariant 7: outside development the session cookie and the trusted-device
    cookie are `Secure`. Production mode needs PostgreSQL and an https issuer (a
    TLS-terminating proxy sits in front; this test talks to the server behind it), so it
    runs on PostgreSQL only."""
    if db.backend != "postgresql":
        pytest.skip("OAUTH2_ENV=production refuses SQLite (config.py Settings.validate)")
    live = start_server(OAUTH2_ENV="production", OAUTH2_ISSUER="https://auth.example.test")
    client_id, user = public_client
    url = oauth_session(client_id, "read").authorization_url(live.url("/oauth2/authorize"))[0]
    page = requests.get(url, allow_redirects=False, timeout=30)
    assert page.status_code == 200 and 'name="password"' in page.text, page.text[:300]
    session = set_cookies(page)["oauth2_session"]
    assert_flags(session, "oauth2_session")

    # A browser sends a Secure cookie only over https; the proxy would. Send it by hand.
    action, fields = form_fields(page.text)
    fields.update(username=user.username, password=PASSWORD)
    signed_in = requests.post(
        live.url(action),
        data=fields,
        headers={"Cookie": f"oauth2_session={session['oauth2_session'].value}"},
        allow_redirects=False,
        timeout=30,
    )
    assert signed_in.status_code == 303, signed_in.text[:300]
    cookies = set_cookies(signed_in)
    assert_flags(cookies["oauth2_session"], "oauth2_session")
    assert_flags(cookies["oauth2_device"], "oauth2_device")
