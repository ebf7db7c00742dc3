"""A stand-in OAuth 2.0 provider (Google's or Microsoft's endpoints) on loopback.

DEVELOPMENT AND TEST TOOL ONLY: it signs anyone in without a password, as a fixed
account. It binds 127.0.0.1 and nothing else, and `oauth2-server serve` never starts
it. `oauth2-server dev fake-provider google` runs it from the command line (see
`oauth2_server/cli/dev.py`); the test suite uses the same class (the `google` fixture).

It serves the authorization (`/o/oauth2/v2/auth`), token (`/token`, RFC 6749 §4.1.3
and §6), revocation (`/revoke`, RFC 7009) and userinfo (`/v1/userinfo`, OIDC) endpoints
and checks what Google checks: client credentials, redirect_uri, PKCE S256 (RFC 7636),
code single use, refresh token validity. There is no consent screen: the authorization
endpoint redirects straight back with a code for `FakeGoogle.account`.

It can be told to misbehave: expire tokens soon (`expires_in`), refuse refreshes
(`refresh_mode = "invalid_grant"`), time out (`"timeout"`) or fail (`"error500"`), grant
fewer scopes than asked (`granted_scope`), answer the authorization with an error
(`authorize_error`), rotate refresh tokens like Microsoft (`rotate_refresh_tokens`), fail
revocations (`revoke_mode = "error500"`). It counts refresh calls and records
revocations. The same fake plays "Microsoft" (same paths; `env("microsoft")`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt

__all__ = [
    "DEFAULT_ACCOUNT",
    "LOOPBACK",
    "Account",
    "FakeGoogle",
    "Grant",
    "account_for",
]

LOOPBACK = "127.0.0.1"  # the only address the stand-in ever binds
MAX_FORM_BYTES = 65536  # a larger token or revocation form is refused (413)


@dataclass(frozen=True)
class Account:
    """A provider account: its OIDC `sub` (numeric, like Google's) and email."""

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
    """The stand-in provider (development and tests only; binds 127.0.0.1 only).

    `FakeGoogle().start(port=0)` serves it on a background thread; `base_url` is then
    `http://127.0.0.1:<port>` and `env(provider)` the settings that point this server at
    it. Configure attributes between requests; `reset()` restores them.
    """

    client_id = "fake-google-client.apps.example"
    client_secret = "fake-google-secret"  # noqa: S105 (public, fixed: a stand-in's credential)
    # The request handler class served by `start` (a subclass may serve another).
    handler: type[BaseHTTPRequestHandler]

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

    def start(self, port: int = 0) -> FakeGoogle:
        """Listen on 127.0.0.1:`port` (0: a free port) and serve on a daemon thread.

        Never any other address: the stand-in signs anyone in. Raises OSError when the
        port is taken or not allowed."""
        fake = self

        class Handler(self.handler):  # type: ignore[name-defined,misc]
            provider = fake

        self._server = ThreadingHTTPServer((LOOPBACK, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

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
            self._write_body(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server under test gave up (timeout test)

    def _write_body(self, data: bytes) -> None:
        """Write an answer's body (a test's provider may trickle it instead)."""
        self.wfile.write(data)

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
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_FORM_BYTES:
            self._send(413 if length > MAX_FORM_BYTES else 400, {"error": "invalid_request"})
            return
        raw = self.rfile.read(length).decode("utf-8", "replace")
        form = {k: v[0] for k, v in parse_qs(raw).items()}
        path = urlsplit(self.path).path
        if path == "/token":
            self._send(*self.provider.token(form))
        elif path == "/revoke":
            self._send(*self.provider.revoke(form))
        else:
            self._send(404, {"error": "not_found"})


FakeGoogle.handler = _Handler
