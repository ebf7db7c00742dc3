"""Two apps in one process stay independent (issue #10 "No global mutation"): each keeps
its own authorization-code lifetime, refresh reuse grace and transport rule, and
`create_app` changes nothing process-wide (no environment variable, no class attribute).

In-process apps (Starlette's TestClient) on SQLite files; no live server needed.
"""

from __future__ import annotations

import os
from pathlib import Path

from authlib.oauth2.rfc6749 import InsecureTransportError
from starlette.testclient import TestClient

from oauth2_server.app import create_app
from oauth2_server.audit.log import RequestContext
from oauth2_server.config import Settings
from oauth2_server.crypto.keyring import generate_key_spec
from oauth2_server.oauth.bridge import OAuthRequest
from oauth2_server.oauth.grants import AuthorizationCodeGrant, RefreshTokenGrant


def _settings(tmp: Path, name: str, issuer: str, code_ttl: int, grace: str) -> Settings:
    (tmp / name).mkdir()
    return Settings.from_env(
        {
            "OAUTH2_ENV": "development",
            "OAUTH2_DATA_DIR": str(tmp / name),
            "OAUTH2_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / name / 'oauth2.db'}",
            "OAUTH2_ENCRYPTION_KEYS": generate_key_spec(f"{name}-1"),
            "OAUTH2_ISSUER": issuer,
            "OAUTH2_AUTHORIZATION_CODE_TTL": str(code_ttl),
            "OAUTH2_REFRESH_REUSE_GRACE": grace,
        }
    )


def _grant(client: TestClient, grant_type: type) -> object:
    """The grant instance the app's own Authlib server creates for a request."""
    oauth = client.app.state.oauth  # type: ignore[attr-defined]
    code = grant_type is AuthorizationCodeGrant
    request = OAuthRequest(
        "GET" if code else "POST",
        oauth.issuer + ("/oauth2/authorize" if code else "/oauth2/token"),
        {},
        {"response_type": ["code"]} if code else {"grant_type": ["refresh_token"]},
        RequestContext(),
        allow_http=oauth.allow_http,
    )
    if code:
        return oauth.server.get_authorization_grant(request)
    return oauth.server.get_token_grant(request)


def test_two_apps_keep_their_own_code_lifetime_grace_and_transport(tmp_path: Path) -> None:
    environ = dict(os.environ)
    plain = create_app(_settings(tmp_path, "a", "http://auth-a.example.test", 7, "0"))
    tls = create_app(_settings(tmp_path, "b", "https://auth-b.example.test", 45, "2.5"))
    assert dict(os.environ) == environ
    with TestClient(plain) as a, TestClient(tls) as b:
        assert dict(os.environ) == environ  # the lifespans changed nothing either
        assert _grant(a, AuthorizationCodeGrant).code_ttl == 7
        assert _grant(b, AuthorizationCodeGrant).code_ttl == 45
        assert _grant(a, RefreshTokenGrant).reuse_grace == 0
        assert _grant(b, RefreshTokenGrant).reuse_grace == 2.5
        # the class defaults are untouched by either app
        assert AuthorizationCodeGrant.code_ttl == 60
        assert RefreshTokenGrant.reuse_grace == 0.0
        # development over http on a non-loopback name: answered by the OAuth layer
        body = {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x"}
        for client in (a, b):
            answer = client.post("/oauth2/token", data=body)
            assert answer.status_code in (400, 401), answer.text
            assert answer.json()["error"] == "invalid_client"
    assert dict(os.environ) == environ


def test_authlib_transport_rule_is_per_request_not_per_process() -> None:
    """Without the app's permission a plain-http, non-loopback URI is refused by Authlib
    (RFC 6749 §3.1 asks for TLS), whatever another app in the process allowed."""
    uri = "http://auth.example.test/oauth2/token"
    allowed = OAuthRequest("POST", uri, {}, {}, RequestContext(), allow_http=True)
    assert allowed.uri == uri
    try:
        OAuthRequest("POST", uri, {}, {}, RequestContext())
    except InsecureTransportError:
        pass
    else:
        raise AssertionError("plain http accepted without the app's permission")
    assert "AUTHLIB_INSECURE_TRANSPORT" not in os.environ
