"""Starting a branch's connection to a provider, and reading who connected
(DESIGN.md "Upstream brokering" steps 1–2).

`begin_connection` is synchronous storage work (the CLI and the admin API call it in
their transaction): it stores a single-use `state` (as its SHA-256) and the PKCE verifier
(encrypted), and returns the provider's authorization URL: RFC 6749 §4.1.1 with RFC 7636
S256, plus the provider's offline-access parameters. `upstream.service` finishes the
connection when the provider redirects back.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from sqlalchemy.orm import Session

from oauth2_server.crypto.hashing import token_digest
from oauth2_server.crypto.keyring import Keyring
from oauth2_server.storage import upstream_states as upstream_storage
from oauth2_server.storage import utcnow
from oauth2_server.storage.branches import get_branch
from oauth2_server.upstream.providers import Provider
from oauth2_server.upstream.sealing import seal_verifier


class ConnectError(Exception):
    """Connecting (or disconnecting) a branch failed; `status` is the HTTP status the
    callback answers with, and the message says what to do. Nothing was stored."""

    def __init__(self, message: str, status: int = 400, error: str = "invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.error = error


def callback_uri(issuer_url: str, provider: str) -> str:
    """The redirect URI registered at the provider: `<issuer>/upstream/<provider>/callback`."""
    return f"{issuer_url.rstrip('/')}/upstream/{provider}/callback"


@dataclass(frozen=True)
class ConnectionStart:
    """Where to send the admin's browser, and until when (UTC) the URL works."""

    branch_id: str
    provider: str
    authorization_url: str
    redirect_uri: str
    expires_at: datetime


def begin_connection(
    session: Session,
    keyring: Keyring,
    provider: Provider,
    branch_id: str,
    *,
    issuer_url: str,
    state_ttl: int,
) -> ConnectionStart:
    """Store a pending connection for `branch_id` and build the authorization URL.

    `state` (256 bits) is single use and expires after `state_ttl` seconds; the PKCE
    verifier never leaves the server. Raises ConnectError for an unknown or inactive
    branch. Also removes expired pending connections.
    """
    branch = get_branch(session, branch_id)
    if branch is None:
        raise ConnectError(f"branch {branch_id!r} not found", 404)
    if not branch.active:
        raise ConnectError(f"branch {branch_id!r} is deactivated; activate it first")
    now = utcnow()
    upstream_storage.delete_expired_states(session, now)
    state = secrets.token_urlsafe(32)
    state_hash = token_digest(state)
    verifier = secrets.token_urlsafe(64)  # 86 characters, RFC 7636 §4.1
    key_id, sealed = seal_verifier(keyring, state_hash, verifier)
    redirect_uri = callback_uri(issuer_url, provider.name)
    scope = " ".join(provider.scopes)
    expires_at = now + timedelta(seconds=state_ttl)
    pending = upstream_storage.StateRow(
        state_hash, provider.name, branch_id, redirect_uri, scope, key_id, sealed, expires_at
    )
    upstream_storage.save_state(session, pending, now)
    params = [
        ("response_type", "code"),
        ("client_id", provider.client_id),
        ("redirect_uri", redirect_uri),
        ("scope", scope),
        ("state", state),
        ("code_challenge", create_s256_code_challenge(verifier)),
        ("code_challenge_method", "S256"),
        *provider.spec.authorization_params,
    ]
    return ConnectionStart(
        branch_id=branch_id,
        provider=provider.name,
        authorization_url=add_params_to_uri(provider.authorization_endpoint, params),
        redirect_uri=redirect_uri,
        expires_at=expires_at,
    )


@dataclass(frozen=True)
class Account:
    """The connected provider account: `sub` keys the grant (never the email)."""

    sub: str
    email: str | None


def account_from_claims(claims: dict[str, Any]) -> Account | None:
    """`sub` and `email` from id_token or userinfo claims; None without a `sub`."""
    sub = claims.get("sub")
    if not isinstance(sub, str | int) or not str(sub):
        return None
    email = claims.get("email")
    return Account(str(sub), email if isinstance(email, str) and email else None)


def id_token_claims(id_token: str, client_id: str) -> dict[str, Any]:
    """Claims of an id_token received from the provider's token endpoint.

    OIDC Core §3.1.3.7 (6): the id_token came directly from the token endpoint over TLS
    (this server called it), so TLS server authentication stands in for the signature
    check, which is skipped here. The audience is still checked: it must name our client.
    Raises ConnectError when the token is unreadable or for another client.
    """
    try:
        claims = jwt.decode(id_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise ConnectError("the provider's id_token is not a readable JWT", 502) from None
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if client_id not in audiences:
        raise ConnectError("the provider's id_token was issued for another client", 502)
    return claims
