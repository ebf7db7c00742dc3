"""Drivers for browser flows, written once: an OAuth client library that is not Authlib
(requests-oauthlib over oauthlib) plus a `requests.Session` playing the user's browser."""

from __future__ import annotations

from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from requests_oauth2client import OAuth2Client
from requests_oauthlib import OAuth2Session

REDIRECT_URI = "http://127.0.0.1:9/callback"  # never contacted: redirects are not followed


class _FormFields(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}
        self.forms: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "form":
            self.forms.append(attributes.get("action") or "")
        if tag == "input" and attributes.get("name"):
            self.fields[attributes["name"] or ""] = attributes.get("value") or ""


def form_fields(html: str) -> tuple[str, dict[str, str]]:
    """(form action, hidden/input fields) of the first form on a page."""
    parser = _FormFields()
    parser.feed(html)
    assert parser.forms, f"no form on page:\n{html[:500]}"
    return parser.forms[0], parser.fields


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


@dataclass
class AuthorizationResult:
    """Where the server sent the browser back to, and the client session that asked."""

    oauth: OAuth2Session
    location: str
    browser: requests.Session

    @property
    def params(self) -> dict[str, str]:
        return query_of(self.location)


def oauth_session(client_id: str, scope: str, redirect_uri: str = REDIRECT_URI) -> OAuth2Session:
    return OAuth2Session(client_id, redirect_uri=redirect_uri, scope=scope.split(), pkce="S256")


def login(
    browser: requests.Session, base_url: str, page: requests.Response, username: str, password: str
) -> requests.Response:
    """Submit the login form on `page`; returns the response (303 on success)."""
    action, fields = form_fields(page.text)
    fields.update(username=username, password=password)
    return browser.post(base_url + action, data=fields, allow_redirects=False, timeout=30)


def decide(
    browser: requests.Session, base_url: str, page: requests.Response, approve: bool = True
) -> requests.Response:
    """Submit the consent form on `page`."""
    action, fields = form_fields(page.text)
    fields["decision"] = "approve" if approve else "deny"
    return browser.post(base_url + action, data=fields, allow_redirects=False, timeout=30)


def authorize_with_pkce(
    base_url: str,
    client_id: str,
    username: str,
    password: str,
    scope: str = "read",
    approve: bool = True,
    browser: requests.Session | None = None,
    redirect_uri: str = REDIRECT_URI,
    **extra: Any,
) -> AuthorizationResult:
    """Run RFC 6749 §4.1 + RFC 7636 S256 in a browser: login, consent, redirect back.

    Returns the final redirect (not followed) with the client session holding the
    code_verifier for `oauth.fetch_token`.
    """
    oauth = oauth_session(client_id, scope, redirect_uri)
    url, _state = oauth.authorization_url(base_url + "/oauth2/authorize", **extra)
    browser = browser or requests.Session()
    page = browser.get(url, allow_redirects=False, timeout=30)
    if page.status_code == 200 and 'name="username"' in page.text:
        done = login(browser, base_url, page, username, password)
        assert done.status_code == 303, done.text
        page = browser.get(base_url + done.headers["location"], allow_redirects=False, timeout=30)
    if page.status_code == 200 and 'name="decision"' in page.text:
        page = decide(browser, base_url, page, approve)
    assert page.status_code == 302, f"{page.status_code}: {page.text[:500]}"
    return AuthorizationResult(oauth, page.headers["location"], browser)


def exchange_code(
    base_url: str, result: AuthorizationResult, client_secret: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Redeem the code with requests-oauthlib (PKCE verifier included); raises on error."""
    return result.oauth.fetch_token(
        base_url + "/oauth2/token",
        authorization_response=result.location,
        client_secret=client_secret,
        include_client_id=client_secret is None,
        **kwargs,
    )


def public_app(db: Any, unique: Any, scope: str = "read") -> str:
    """A new public client for the code flow with refresh tokens (RFC 6749 §2.1, PKCE
    required), redirecting to REDIRECT_URI; its client_id."""
    client_id, _ = db.create_client(
        name=unique("app"),
        public=True,
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI],
        scope=scope,
    )
    return client_id


def discovered(server, client_id: str, secret: str | None = None, **kwargs) -> OAuth2Client:
    """The library's client, from /.well-known/oauth-authorization-server (`testing`:
    our test server speaks http on loopback)."""
    return OAuth2Client.from_discovery_endpoint(
        server.url("/.well-known/oauth-authorization-server"),
        issuer=server.base_url,
        client_id=client_id,
        client_secret=secret,
        testing=True,
        **kwargs,
    )
