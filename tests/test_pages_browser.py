"""The login and consent pages (RFC 6749 §4.1.1, §10.12 CSRF; RFC 8252 §7 redirect targets)
in a real browser: Playwright driving Debian's chromium (`/usr/bin/chromium`; browsers cannot
be downloaded here, so `playwright install` is never used).

Screenshots of each page go to a temporary directory, or to docs/ (README links them) when
UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
import requests

from oauth2_server.config import ConfigError, Settings
from oauth2_server.web.authorize import redirect_target
from tests.flows import form_fields, query_of

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parent.parent / "docs"
PASSWORD = "correct horse battery"
APP = "https://app.example.com/callback"  # never contacted: chromium resolves it to nothing
CONFIGURED = {"reviews:reply": "Reply to reviews of your branches"}

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One chromium for the module; fails (never skips) when it is not installed."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            # The client's host stays unreachable: the test reads the redirect the browser
            # starts, and nothing leaves the machine (request interception does not see a
            # redirect's target).
            args=["--host-resolver-rules=MAP app.example.com ~NOTFOUND"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page, 640 × 480 px."""
    context = chromium.new_context(viewport={"width": 640, "height": 480})
    context.set_default_timeout(30_000)
    yield context.new_page()
    context.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        return DOCS
    return tmp_path


def pkce() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge), RFC 7636 §4.1-4.2."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorization_url(server: Any, client_id: str, scope: str, challenge: str, state: str) -> str:
    return server.url(
        "/oauth2/authorize?"
        + urlencode(
            {
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": APP,
                "scope": scope,
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
    )


def code_flow_url(server: Any, db: Any, name: str, scope: str = "read") -> str:
    """Register a public client `name` redirecting to APP; its authorization URL (state "s")."""
    client_id, _ = db.create_client(
        name=name,
        public=True,
        grant_types=["authorization_code"],
        redirect_uris=[APP],
        scope=scope,
    )
    _verifier, challenge = pkce()
    return authorization_url(server, client_id, scope, challenge, "s")


def assert_page_headers(response: Any) -> None:
    """Invariant 7: HTML pages forbid framing; the CSP allows inline styles, no script."""
    headers = response.headers
    assert headers["x-frame-options"] == "DENY"
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src" not in csp


def test_login_consent_not_you_and_redirect_in_a_browser(
    start_server, db, unique, page, screenshots
):
    """Wrong password (the client is still named), consent with scope descriptions and the
    redirect host, "not you?" back to the login page, another user, the code at the client."""
    server = start_server(OAUTH2_SCOPE_DESCRIPTIONS=json.dumps(CONFIGURED))
    scope = "profile reviews:read reviews:reply branch:42"
    client_id, _ = db.create_client(
        name="Reviews Dashboard",
        public=True,
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[APP],
        scope=scope,
    )
    alice = db.create_user(unique("alice"), PASSWORD)
    bob = db.create_user(unique("bob"), PASSWORD)
    verifier, challenge = pkce()
    state = secrets.token_urlsafe(16)

    # Login page: names the client and where the browser will be sent.
    response = page.goto(authorization_url(server, client_id, scope, challenge, state))
    assert response.status == 200
    assert_page_headers(response)
    assert page.title() == "Sign in to continue to Reviews Dashboard"
    assert page.locator("script").count() == 0
    assert "to continue to Reviews Dashboard" in page.inner_text("main")
    assert "sent back to app.example.com" in page.inner_text("main")
    page.screenshot(path=screenshots / "login.png", full_page=True)

    # A wrong password: 401, an alert, and the client is still named (issue #12).
    page.get_by_label("Username").fill(alice.username)
    page.get_by_label("Password").fill("not the password")
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Sign in").click()
    assert navigation.value.status == 401
    assert page.get_by_role("alert").inner_text() == "Wrong username or password."
    assert page.title() == "Error: Sign in to continue to Reviews Dashboard"
    assert "to continue to Reviews Dashboard" in page.inner_text("main")
    assert "sent back to app.example.com" in page.inner_text("main")
    page.screenshot(path=screenshots / "login-failed.png", full_page=True)

    # The right password: the consent page.
    page.get_by_label("Username").fill(alice.username)
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation(url="**/oauth2/authorize?**") as navigation:
        page.get_by_role("button", name="Sign in").click()
    assert navigation.value.status == 200
    assert_page_headers(navigation.value)
    assert page.title() == "Allow Reviews Dashboard to act for you?"
    items = page.locator("ul.scopes li").all_inner_texts()
    assert items == [
        "See your user id (profile)",  # built-in description
        "Read your reviews (reviews:read)",  # built-in description
        "Reply to reviews of your branches (reviews:reply)",  # OAUTH2_SCOPE_DESCRIPTIONS
        "branch:42",  # no description: the scope's name
    ]
    text = page.inner_text("main")
    assert f"act for {alice.username}" in text
    assert "sent back to app.example.com" in text
    assert page.locator("script").count() == 0
    page.screenshot(path=screenshots / "consent.png", full_page=True)

    # "Not you?": a POST with the CSRF token; the session ends, the same request asks again.
    with page.expect_navigation(url="**/oauth2/authorize?**"):
        page.get_by_role("button", name="Sign in as someone else").click()
    assert page.title() == "Sign in to continue to Reviews Dashboard"
    page.get_by_label("Username").fill(bob.username)
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation(url="**/oauth2/authorize?**"):
        page.get_by_role("button", name="Sign in").click()
    assert f"act for {bob.username}" in page.inner_text("main")
    with page.expect_request(lambda request: request.url.startswith(APP + "?")) as arrived:
        page.get_by_role("button", name="Allow").click()

    # Back at the client with a code for bob (RFC 6749 §4.1.2, RFC 9207 `iss`).
    params = query_of(arrived.value.url)
    assert params["state"] == state and params["iss"] == server.base_url
    token = server.post(
        "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": APP,
            "client_id": client_id,
            "code_verifier": verifier,
        },
    )
    assert token.status_code == 200, token.text
    claims = jwt.decode(token.json()["access_token"], options={"verify_signature": False})
    assert claims["sub"] == bob.subject and claims["sub"] != alice.subject


def test_client_name_and_unknown_scope_are_escaped(server, db, unique, page):
    """Names and scopes are text, never markup (Jinja autoescape): a scope token may hold
    `<`, `>` and `'` (RFC 6749 §3.3 NQCHAR)."""
    url = code_flow_url(server, db, "<b>Bold</b> & co", scope="read <i>raw</i>")
    user = db.create_user(unique("carol"), PASSWORD)
    page.goto(url)
    assert "to continue to <b>Bold</b> & co" in page.inner_text("main")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation(url="**/oauth2/authorize?**"):
        page.get_by_role("button", name="Sign in").click()
    assert page.locator("ul.scopes li").all_inner_texts() == [
        "Read your data (read)",
        "<i>raw</i>",
    ]
    assert page.locator("main b, main i").count() == 0
    assert page.title() == "Allow <b>Bold</b> & co to act for you?"


def test_throttled_login_still_names_the_client(start_server, db, unique):
    """A refused attempt (429 over the login limit) keeps the client's name on the page."""
    server = start_server(
        OAUTH2_CLIENT_AUTH_FAILURE_LIMIT="2", OAUTH2_FORWARDED_ALLOW_IPS="127.0.0.1"
    )
    url = code_flow_url(server, db, "Throttled App")
    browser = requests.Session()
    browser.headers["X-Forwarded-For"] = f"198.51.100.{secrets.randbelow(250) + 1}"
    username = unique("dave")
    statuses = []
    for _ in range(4):
        page = browser.get(url, timeout=30)
        action, fields = form_fields(page.text)
        fields.update(username=username, password="wrong")
        answer = browser.post(server.url(action), data=fields, allow_redirects=False, timeout=30)
        statuses.append(answer.status_code)
        assert "to continue to <strong>Throttled App</strong>" in answer.text
        assert "sent back to <strong>app.example.com</strong>" in answer.text
    assert statuses[0] == 401 and statuses[-1] == 429, statuses


def test_sign_out_needs_the_csrf_token(server, db, unique):
    """ "Not you?" changes state, so it is a POST checked like every form (invariant 7,
    RFC 6749 §10.12): without the session's CSRF token it is refused and the user stays
    signed in."""
    url = code_flow_url(server, db, "CSRF App")
    user = db.create_user(unique("erin"), PASSWORD)
    browser = requests.Session()
    action, fields = form_fields(browser.get(url, timeout=30).text)
    fields.update(username=user.username, password=PASSWORD)
    signed_in = browser.post(server.url(action), data=fields, allow_redirects=False, timeout=30)
    assert signed_in.status_code == 303
    consent = browser.get(url, timeout=30)
    assert 'name="decision"' in consent.text
    forged = browser.post(
        server.url(action), data={"action": "logout"}, allow_redirects=False, timeout=30
    )
    assert forged.status_code == 400
    assert 'name="decision"' in browser.get(url, timeout=30).text  # still signed in
    _action, fields = form_fields(consent.text)
    out = browser.post(
        server.url(action),
        data={"action": "logout", "csrf_token": fields["csrf_token"]},
        allow_redirects=False,
        timeout=30,
    )
    assert out.status_code == 303 and out.headers["location"].startswith("/oauth2/authorize?")
    assert 'name="password"' in browser.get(url, timeout=30).text  # signed out


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("https://app.example.com/callback", "app.example.com"),
        ("https://app.example.com:8443/cb?x=1", "app.example.com:8443"),
        ("http://127.0.0.1:53124/cb", "this device"),
        ("http://[::1]/cb", "this device"),
        ("http://localhost:8080/cb", "this device"),
        ("com.example.app:/oauth/callback", "the app com.example.app"),
    ],
)
def test_redirect_target_names_host_device_or_app(uri, shown):
    """RFC 8252 §7.1-7.3: a web host, a loopback redirect or a private-use scheme."""
    assert redirect_target(uri) == shown


def test_scope_descriptions_setting_is_checked():
    """OAUTH2_SCOPE_DESCRIPTIONS: a JSON object of scope-tokens to short text; built-ins stay
    unless overridden."""
    settings = Settings.from_env({"OAUTH2_SCOPE_DESCRIPTIONS": '{"read": "Read your orders"}'})
    described = dict(settings.scope_descriptions)
    assert described["read"] == "Read your orders" and "admin" in described
    assert dict(Settings.from_env({}).scope_descriptions)["read"] == "Read your data"


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("[]", id="not-an-object"),
        pytest.param("not json", id="not-json"),
        pytest.param('{"a b": "x"}', id="not-a-scope-token"),
        pytest.param('{"a": ""}', id="empty-text"),
        pytest.param('{"a": 1}', id="not-text"),
        pytest.param('{"a": "x\\ny"}', id="more-than-one-line"),
    ],
)
def test_bad_scope_descriptions_are_a_config_error_naming_the_variable(bad):
    """Anything but a JSON object of scope-tokens (RFC 6749 §3.3) to one line of text is a
    one-line ConfigError naming the variable."""
    with pytest.raises(ConfigError, match="^OAUTH2_SCOPE_DESCRIPTIONS="):
        Settings.from_env({"OAUTH2_SCOPE_DESCRIPTIONS": bad})
