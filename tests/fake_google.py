"""A fake Google (authorization, token, revocation and userinfo endpoints) served on
127.0.0.1 by the tests, and helpers that drive the upstream flows against a live server.

The fake checks what Google checks (client credentials, redirect_uri, PKCE S256, code
single use, refresh token validity) and can be told to misbehave: expire tokens soon
(`expires_in`), refuse refreshes (`refresh_mode = "invalid_grant"`), time out
(`"timeout"`) or fail (`"error500"`), grant fewer scopes than asked (`granted_scope`),
answer the authorization with an error (`authorize_error`), rotate refresh tokens like
Microsoft (`rotate_refresh_tokens`), fail revocations (`revoke_mode = "error500"`). It
counts refresh calls and records revocations. The same fake also plays "Microsoft" (same
paths) for the provider-abstraction test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import requests

from oauth2_server.config import Settings
from oauth2_server.crypto.keyring import load_keyring
from oauth2_server.storage.branches import create_branch, get_branch, grant_branch
from oauth2_server.upstream.connect import begin_connection
from oauth2_server.upstream.providers import load_provider

BUSINESS_MANAGE = "https://www.googleapis.com/auth/business.manage"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


@dataclass(frozen=True)
class Account:
    sub: str
    email: str


DEFAULT_ACCOUNT = Account("100000000000000000001", "owner@branch.example")


def account_for(name: str) -> Account:
    """A Google account of its own for a test branch (a numeric `sub`, like Google's)."""
    digest = int(hashlib.sha256(name.encode()).hexdigest(), 16)
    return Account(str(10**20 + digest % 10**20), f"{name}@branch.example")


@dataclass
class Grant:
    """One consent at the fake: an account, its scope, whether it was revoked."""

    account: Account
    scope: str
    revoked: bool = False
    refresh_tokens: list[str] = field(default_factory=list)


class FakeGoogle:
    """The fake provider. Configure attributes between requests; `reset()` restores them."""

    client_id = "fake-google-client.apps.example"
    client_secret = "fake-google-secret"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.grants: dict[str, Grant] = {}  # refresh token -> grant
        self.codes: dict[str, dict[str, Any]] = {}
        self.access_tokens: dict[str, Account] = {}
        self.id_token_key = secrets.token_bytes(32)
        self.reset()
        self._server: ThreadingHTTPServer | None = None

    def reset(self) -> None:
        """Default behaviour and zeroed counters (grants already issued stay valid)."""
        self.account = DEFAULT_ACCOUNT
        self.expires_in = 3599
        self.granted_scope: str | None = None
        self.authorize_error: str | None = None
        self.refresh_mode = "ok"
        self.refresh_delay = 0.0
        self.hang_seconds = 3.0
        self.rotate_refresh_tokens = False
        self.revoke_mode = "ok"
        self.include_id_token = True
        self.include_refresh_token_on_code = True
        self.refresh_calls = 0
        self.code_exchanges = 0
        self.revocations: list[str] = []
        self.authorize_requests: list[dict[str, str]] = []
        self.issued_access_tokens: list[str] = []
        self.issued_refresh_tokens: list[str] = []

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> FakeGoogle:
        fake = self

        class Handler(_Handler):
            provider = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def env(self, provider: str = "google") -> dict[str, str]:
        """OAUTH2_UPSTREAM_<PROVIDER>_* settings pointing at this fake."""
        prefix = f"OAUTH2_UPSTREAM_{provider.upper()}_"
        return {
            f"{prefix}CLIENT_ID": self.client_id,
            f"{prefix}CLIENT_SECRET": self.client_secret,
            f"{prefix}AUTHORIZATION_ENDPOINT": self.base_url + "/o/oauth2/v2/auth",
            f"{prefix}TOKEN_ENDPOINT": self.base_url + "/token",
            f"{prefix}REVOCATION_ENDPOINT": self.base_url + "/revoke",
            f"{prefix}USERINFO_ENDPOINT": self.base_url + "/v1/userinfo",
        }

    # -- behaviour --------------------------------------------------------------------

    def _issue_access(self, account: Account) -> str:
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        self.access_tokens[token] = account
        self.issued_access_tokens.append(token)
        return token

    def _issue_refresh(self, grant: Grant) -> str:
        token = "1//fake-refresh-" + secrets.token_urlsafe(24)
        grant.refresh_tokens.append(token)
        self.grants[token] = grant
        self.issued_refresh_tokens.append(token)
        return token

    def authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        with self.lock:
            self.authorize_requests.append(query)
            redirect_uri = query.get("redirect_uri", "")
            if query.get("client_id") != self.client_id or not redirect_uri:
                return 400, {}, {"error": "invalid_request"}
            state = query.get("state", "")
            if self.authorize_error:
                params = {"error": self.authorize_error, "state": state}
                return 302, {"Location": f"{redirect_uri}?{urlencode(params)}"}, None
            code = "4/fake-code-" + secrets.token_urlsafe(16)
            self.codes[code] = {
                "redirect_uri": redirect_uri,
                "challenge": query.get("code_challenge"),
                "method": query.get("code_challenge_method"),
                "scope": self.granted_scope or query.get("scope", ""),
                "account": self.account,
            }
            params = {"code": code, "state": state, "scope": self.codes[code]["scope"]}
            return 302, {"Location": f"{redirect_uri}?{urlencode(params)}"}, None

    def token(self, form: dict[str, str]) -> tuple[int, Any]:
        if form.get("client_id") != self.client_id or form.get("client_secret") != (
            self.client_secret
        ):
            return 401, {"error": "invalid_client"}
        if form.get("grant_type") == "authorization_code":
            return self._code(form)
        if form.get("grant_type") == "refresh_token":
            return self._refresh(form)
        return 400, {"error": "unsupported_grant_type"}

    def _code(self, form: dict[str, str]) -> tuple[int, Any]:
        with self.lock:
            self.code_exchanges += 1
            stored = self.codes.pop(form.get("code", ""), None)
            if stored is None or stored["redirect_uri"] != form.get("redirect_uri"):
                return 400, {"error": "invalid_grant", "error_description": "Bad code."}
            verifier = form.get("code_verifier", "")
            digest = hashlib.sha256(verifier.encode()).digest()
            challenge = base64.urlsafe_b64encode(digest).decode().rstrip("=")
            if stored["method"] != "S256" or challenge != stored["challenge"]:
                return 400, {"error": "invalid_grant", "error_description": "PKCE failed."}
            account: Account = stored["account"]
            grant = Grant(account, stored["scope"])
            body: dict[str, Any] = {
                "access_token": self._issue_access(account),
                "expires_in": self.expires_in,
                "scope": stored["scope"],
                "token_type": "Bearer",
            }
            if self.include_refresh_token_on_code:
                body["refresh_token"] = self._issue_refresh(grant)
            if self.include_id_token:
                body["id_token"] = jwt.encode(
                    {
                        "iss": "https://accounts.google.com",
                        "aud": self.client_id,
                        "sub": account.sub,
                        "email": account.email,
                        "email_verified": True,
                        "iat": int(time.time()),
                        "exp": int(time.time()) + 3600,
                    },
                    self.id_token_key,
                    algorithm="HS256",
                )
            return 200, body

    def _refresh(self, form: dict[str, str]) -> tuple[int, Any]:
        with self.lock:
            self.refresh_calls += 1
            mode, delay = self.refresh_mode, self.refresh_delay
        if delay:
            time.sleep(delay)
        if mode == "timeout":
            time.sleep(self.hang_seconds)
        if mode == "error500":
            return 500, {"error": "internal_failure"}
        if mode == "invalid_grant":
            return 400, {
                "error": "invalid_grant",
                "error_description": "Token has been expired or revoked.",
            }
        with self.lock:
            grant = self.grants.get(form.get("refresh_token", ""))
            if grant is None or grant.revoked or form["refresh_token"] not in grant.refresh_tokens:
                return 400, {"error": "invalid_grant", "error_description": "Bad refresh."}
            body: dict[str, Any] = {
                "access_token": self._issue_access(grant.account),
                "expires_in": self.expires_in,
                "scope": grant.scope,
                "token_type": "Bearer",
            }
            if self.rotate_refresh_tokens:
                grant.refresh_tokens.remove(form["refresh_token"])
                body["refresh_token"] = self._issue_refresh(grant)
            return 200, body

    def revoke(self, form: dict[str, str]) -> tuple[int, Any]:
        if self.revoke_mode == "error500":
            return 500, {"error": "internal_failure"}
        with self.lock:
            token = form.get("token", "")
            self.revocations.append(token)
            grant = self.grants.get(token)
            if grant is None:
                return 400, {"error": "invalid_token"}
            grant.revoked = True
            return 200, {}

    def userinfo(self, authorization: str) -> tuple[int, Any]:
        account = self.access_tokens.get(authorization.removeprefix("Bearer "))
        if account is None:
            return 401, {"error": "invalid_token"}
        return 200, {"sub": account.sub, "email": account.email, "email_verified": True}


class _Handler(BaseHTTPRequestHandler):
    provider: FakeGoogle

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server under test gave up (timeout test)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path == "/o/oauth2/v2/auth":
            status, headers, body = self.provider.authorize(query)
            self._send(status, body, headers)
        elif parts.path == "/v1/userinfo":
            self._send(*self.provider.userinfo(self.headers.get("Authorization", "")))
        else:
            self._send(404, {"error": "not_found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        path = urlsplit(self.path).path
        if path == "/token":
            self._send(*self.provider.token(form))
        elif path == "/revoke":
            self._send(*self.provider.revoke(form))
        else:
            self._send(404, {"error": "not_found"})


# -- driving the flows against a live server ------------------------------------------


def server_settings(server: Any) -> Settings:
    return Settings.from_env(server.env)


def ensure_branch(db: Any, branch_id: str, name: str = "Test branch") -> None:
    with db.session() as session:
        if get_branch(session, branch_id) is None:
            create_branch(session, branch_id=branch_id, name=name)


def connection_url(
    server: Any, db: Any, branch_id: str, provider: str = "google", state_ttl: int | None = None
) -> str:
    """What `branches connect` prints, made in-process with the server's settings."""
    settings = server_settings(server)
    ensure_branch(db, branch_id)
    with db.session() as session:
        start = begin_connection(
            session,
            load_keyring(settings),
            load_provider(settings, provider),
            branch_id,
            issuer_url=settings.issuer_url,
            state_ttl=state_ttl if state_ttl is not None else settings.upstream_state_ttl,
        )
    return start.authorization_url


def follow_consent(authorization_url: str) -> str:
    """The admin's browser at the fake: returns where the fake redirects back to."""
    response = requests.get(authorization_url, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    return response.headers["Location"]


def callback(location: str) -> requests.Response:
    return requests.get(location, headers={"Accept": "application/json"}, timeout=30)


def connect_branch(
    server: Any,
    db: Any,
    google: FakeGoogle,
    branch_id: str,
    account: Account | None = None,
    expires_in: int | None = None,
    provider: str = "google",
) -> dict[str, Any]:
    """Connect `branch_id` end to end (URL → fake consent → callback); the JSON answer.

    Without `account`, the branch gets a Google account of its own (branches of one
    account share one grant, so tests share accounts only on purpose)."""
    google.account = account or account_for(branch_id)
    if expires_in is not None:
        google.expires_in = expires_in
    try:
        response = callback(follow_consent(connection_url(server, db, branch_id, provider)))
    finally:
        google.account = DEFAULT_ACCOUNT
        google.expires_in = 3599
    assert response.status_code == 200, response.text
    return response.json()


def exchange_client(
    db: Any,
    branches: list[str],
    scope: str = "upstream:google read",
    grant_types: list[str] | None = None,
) -> tuple[str, str]:
    """A confidential client registered for token exchange and granted `branches`."""
    client_id, secret = db.create_client(
        grant_types=grant_types or ["client_credentials", TOKEN_EXCHANGE], scope=scope
    )
    with db.session() as session:
        for branch_id in branches:
            grant_branch(session, client_id, branch_id)
    assert secret is not None
    return client_id, secret


def exchange(
    server: Any,
    client_id: str,
    secret: str,
    subject_token: str | None,
    branch_id: str | None,
    **params: str | None,
) -> requests.Response:
    """POST a token exchange; parameters given as None are left out."""
    data: dict[str, str | None] = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "audience": "google",
        "branch_id": branch_id,
    }
    data.update(params)
    return server.post(
        "/oauth2/token",
        auth=(client_id, secret),
        data={k: v for k, v in data.items() if v is not None},
    )


def credential_rows(db: Any) -> list[tuple[Any, ...]]:
    """Every stored upstream grant, ciphertexts included (to show nothing changed)."""
    return [
        tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
        for row in db.rows(
            "SELECT id, provider, account_sub, scope, encryption_key_id, access_token_ciphertext, "
            "refresh_token_ciphertext, access_expires_at, needs_consent, last_refreshed_at "
            "FROM oauth2_upstream_credentials ORDER BY id"
        )
    ]


def credential_of(db: Any, branch_id: str, provider: str = "google") -> dict[str, Any] | None:
    rows = db.rows(
        "SELECT c.id, c.account_sub, c.account_email, c.scope, c.encryption_key_id, "
        "c.access_token_ciphertext, c.refresh_token_ciphertext, c.access_expires_at, "
        "c.needs_consent, c.last_refreshed_at, c.consent_error "
        "FROM oauth2_branch_upstream_links l JOIN oauth2_upstream_credentials c "
        "ON c.id = l.credential_id WHERE l.branch_id = :b AND l.provider = :p",
        b=branch_id,
        p=provider,
    )
    if not rows:
        return None
    keys = [
        "id",
        "account_sub",
        "account_email",
        "scope",
        "encryption_key_id",
        "access",
        "refresh",
        "access_expires_at",
        "needs_consent",
        "last_refreshed_at",
        "consent_error",
    ]
    row = dict(zip(keys, rows[0], strict=True))
    row["access"], row["refresh"] = bytes(row["access"]), bytes(row["refresh"])
    row["needs_consent"] = bool(row["needs_consent"])
    return row


def decrypt_stored(keys: str, row: dict[str, Any], kind: str, provider: str = "google") -> str:
    """Decrypt a stored token the way the server does (tests of the at-rest format)."""
    from oauth2_server.crypto.keyring import parse_keyring
    from oauth2_server.upstream.sealing import open_token

    return open_token(
        parse_keyring(keys),
        key_id=row["encryption_key_id"],
        ciphertext=row[kind],
        credential_id=row["id"],
        provider=provider,
        account_sub=row["account_sub"],
        kind=kind,
    )


def cli(server: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `oauth2-server …` with the live server's environment."""
    return subprocess.run(
        [sys.executable, "-m", "oauth2_server", *args],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
