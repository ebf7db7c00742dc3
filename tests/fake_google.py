"""Helpers that drive the upstream flows against a live server, with the stand-in
provider the package ships (`oauth2_server.dev.fake_provider`, re-exported here: the
tests use the same fake that `oauth2-server dev fake-provider` runs).
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
from sqlalchemy import select, update

from oauth2_server.config import Settings
from oauth2_server.crypto.keyring import load_keyring
from oauth2_server.db.models import UpstreamCredential
from oauth2_server.dev.fake_provider import (
    DEFAULT_ACCOUNT,
    Account,
    FakeGoogle,
    Grant,  # noqa: F401 (re-exported for tests)
    account_for,
)
from oauth2_server.dev.fake_provider import _Handler as ProviderHandler
from oauth2_server.storage.branches import create_branch, get_branch, grant_branch
from oauth2_server.upstream.connect import begin_connection
from oauth2_server.upstream.providers import load_provider

BUSINESS_MANAGE = "https://www.googleapis.com/auth/business.manage"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
FAKE_LIFETIME = 3599  # the stand-in's default `expires_in`


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
    lifetime: int | None = FAKE_LIFETIME,
) -> dict[str, Any]:
    """Connect `branch_id` end to end (URL → fake consent → callback); the JSON answer.

    Without `account`, the branch gets a Google account of its own (branches of one
    account share one grant, so tests share accounts only on purpose). `expires_in`:
    seconds the stored access token has left, as if it had been issued `lifetime`
    seconds before it expires (an ordinary token near its end, default); with
    `lifetime=None` it is a token the provider issued that short-lived
    (`upstream.freshness`)."""
    google.account = account or account_for(branch_id)
    if expires_in is not None:
        google.expires_in = expires_in
    try:
        response = callback(follow_consent(connection_url(server, db, branch_id, provider)))
    finally:
        google.account = DEFAULT_ACCOUNT
        google.expires_in = 3599
    assert response.status_code == 200, response.text
    if expires_in is not None and lifetime is not None:
        age_stored_token(db, branch_id, provider, lifetime)
    return response.json()


def age_stored_token(db: Any, branch_id: str, provider: str, lifetime: int) -> None:
    """Date the branch's stored access token as issued `lifetime` seconds before its
    expiry (the stand-in issued it with less: the token looks old, not short-lived)."""
    row = credential_of(db, branch_id, provider)
    assert row is not None
    with db.session() as session:
        expires_at = session.scalar(
            select(UpstreamCredential.access_expires_at).where(UpstreamCredential.id == row["id"])
        )
        session.execute(
            update(UpstreamCredential)
            .where(UpstreamCredential.id == row["id"])
            .values(access_issued_at=expires_at - timedelta(seconds=lifetime))
        )


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


def refresh_mark(db: Any, branch_id: str, provider: str = "google") -> dict[str, Any]:
    """The grant's refresh-in-progress mark and failure record (README "Upstream provider
    faults")."""
    rows = db.rows(
        "SELECT c.refresh_started_at, c.refresh_lease_until, c.last_refresh_error, "
        "c.last_refresh_error_at, c.refresh_failures, c.access_issued_at "
        "FROM oauth2_branch_upstream_links l JOIN oauth2_upstream_credentials c "
        "ON c.id = l.credential_id WHERE l.branch_id = :b AND l.provider = :p",
        b=branch_id,
        p=provider,
    )
    keys = [
        "refresh_started_at",
        "refresh_lease_until",
        "last_refresh_error",
        "last_refresh_error_at",
        "refresh_failures",
        "access_issued_at",
    ]
    return dict(zip(keys, rows[0], strict=True))


def wait_refresh_settled(
    db: Any, branch_id: str, provider: str = "google", timeout: float = 30.0
) -> dict[str, Any]:
    """Wait until no refresh of the branch's grant is in flight (its mark is cleared); the
    mark row then."""
    deadline = time.monotonic() + timeout
    while True:
        mark = refresh_mark(db, branch_id, provider)
        if mark["refresh_started_at"] is None:
            return mark
        assert time.monotonic() < deadline, f"refresh of {branch_id} still in flight: {mark}"
        time.sleep(0.05)


# -- a stand-in provider with the faults of issue #14 item 5 -----------------------------


class FaultyProvider(FakeGoogle):
    """The stand-in provider with two more faults (tests/test_upstream_faults.py):

    - `trickle_seconds`: token endpoint answers are sent one byte every that many
      seconds (a slow body, within httpx's per-read timeout);
    - `refresh_scope`: refresh answers carry this `scope` (the owner removed a scope).

    The others are FakeGoogle's: `refresh_mode = "timeout"` with `hang_seconds` (a hang,
    then an answer), `refresh_delay` with `rotate_refresh_tokens` (a late answer carrying
    a rotated refresh token), `expires_in` (a short lifetime).
    """

    def reset(self) -> None:
        super().reset()
        self.trickle_seconds = 0.0
        self.refresh_scope: str | None = None

    def token(self, form: dict[str, str]) -> tuple[int, Any]:
        status, body = super().token(form)
        refreshed = form.get("grant_type") == "refresh_token" and status == 200
        if refreshed and self.refresh_scope is not None:
            body["scope"] = self.refresh_scope
        return status, body


class _TrickleHandler(ProviderHandler):
    provider: FaultyProvider

    def _write_body(self, data: bytes) -> None:
        delay = self.provider.trickle_seconds
        if not delay or urlsplit(self.path).path != "/token":
            super()._write_body(data)
            return
        for byte in data:  # a broken connection ends it in ProviderHandler._send
            self.wfile.write(bytes([byte]))
            time.sleep(delay)


FaultyProvider.handler = _TrickleHandler
