"""Helpers that drive the upstream flows against a live server, with the stand-in
provider the package ships (`oauth2_server.dev.fake_provider`, re-exported here: the
tests use the same fake that `oauth2-server dev fake-provider` runs).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import requests

from oauth2_server.config import Settings
from oauth2_server.crypto.keyring import load_keyring
from oauth2_server.dev.fake_provider import (
    DEFAULT_ACCOUNT,
    Account,
    FakeGoogle,
    Grant,  # noqa: F401 (re-exported for tests)
    account_for,
)
from oauth2_server.storage.branches import create_branch, get_branch, grant_branch
from oauth2_server.upstream.connect import begin_connection
from oauth2_server.upstream.providers import load_provider

BUSINESS_MANAGE = "https://www.googleapis.com/auth/business.manage"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


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
