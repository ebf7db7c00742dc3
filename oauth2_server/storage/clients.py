"""Registered clients (RFC 6749 §2; RFC 7591 metadata names)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from oauth2_server.crypto.hashing import hash_client_secret
from oauth2_server.db.models import Client
from oauth2_server.storage import utcnow

AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")
GRANT_TYPES = (
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "urn:ietf:params:oauth:grant-type:token-exchange",
)


class ClientRegistrationError(ValueError):
    """Registration metadata is invalid; the message names the field."""


@dataclass(frozen=True)
class ClientRecord:
    """An immutable snapshot of a client row, safe to cache between changes."""

    client_id: str
    name: str
    secret_hash: str | None = field(repr=False)
    token_endpoint_auth_method: str
    grant_types: tuple[str, ...]
    redirect_uris: tuple[str, ...]
    scope: str
    active: bool
    updated_at: datetime

    @property
    def is_public(self) -> bool:
        return self.token_endpoint_auth_method == "none"  # noqa: S105 (a method name)

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(self.scope.split())


def new_client_id() -> str:
    """A fresh client identifier (RFC 6749 §2.2): 128 random bits, URL-safe base64, never
    starting with `-` or `_`, so it can follow an option on any command line
    (`oauth2-server branches grant B --client ID`) without being read as one."""
    while True:
        client_id = secrets.token_urlsafe(16)
        if client_id[0].isalnum():
            return client_id


def _record(row: Client) -> ClientRecord:
    return ClientRecord(
        client_id=row.client_id,
        name=row.name,
        secret_hash=row.secret_hash,
        token_endpoint_auth_method=row.token_endpoint_auth_method,
        grant_types=tuple(row.grant_types),
        redirect_uris=tuple(row.redirect_uris),
        scope=row.scope,
        active=row.active,
        updated_at=row.updated_at,
    )


def get_client(session: Session, client_id: str) -> ClientRecord | None:
    """The client with this id (active or not), or None."""
    row = session.scalars(select(Client).where(Client.client_id == client_id)).first()
    return _record(row) if row else None


def count_clients(session: Session) -> int:
    """Number of registered clients (the first-run bootstrap checks for zero)."""
    return session.scalar(select(func.count()).select_from(Client)) or 0


def validate_redirect_uri(uri: str) -> None:
    """RFC 6749 §3.1.2 / RFC 9700 §2.1: absolute, no fragment, https unless loopback.

    Raises ClientRegistrationError naming the URI.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.fragment or "#" in uri:
        raise ClientRegistrationError(f"redirect_uri {uri!r} must not contain a fragment")
    if not parts.scheme or not parts.netloc:
        raise ClientRegistrationError(f"redirect_uri {uri!r} must be an absolute URI")
    loopback = parts.hostname in {"localhost", "127.0.0.1", "::1"}
    if parts.scheme == "http" and not loopback:
        raise ClientRegistrationError(f"redirect_uri {uri!r} must use https (or loopback http)")
    if parts.scheme not in {"http", "https"} and "." not in parts.scheme:
        # RFC 8252 §7.1: private-use schemes are reverse domain names.
        raise ClientRegistrationError(f"redirect_uri {uri!r} has an unsupported scheme")


def create_client(
    session: Session,
    *,
    name: str,
    grant_types: list[str],
    redirect_uris: list[str],
    scope: str,
    public: bool = False,
    token_endpoint_auth_method: str | None = None,
    client_id: str | None = None,
) -> tuple[ClientRecord, str | None]:
    """Register a client. Returns (record, client secret shown once; None for public).

    Raises ClientRegistrationError on unknown grant types or auth methods, a public
    client asking for client_credentials, or an authorization-code client without a
    valid redirect URI.
    """
    method = token_endpoint_auth_method or ("none" if public else "client_secret_basic")
    if method not in AUTH_METHODS:
        raise ClientRegistrationError(f"token_endpoint_auth_method {method!r} is not supported")
    if public != (method == "none"):
        raise ClientRegistrationError("public clients use token_endpoint_auth_method 'none'")
    for grant in grant_types:
        if grant not in GRANT_TYPES:
            raise ClientRegistrationError(f"grant type {grant!r} is not supported")
    if not grant_types:
        raise ClientRegistrationError("grant_types must not be empty")
    if public and "client_credentials" in grant_types:
        raise ClientRegistrationError("public clients cannot use client_credentials")
    if "authorization_code" in grant_types and not redirect_uris:
        raise ClientRegistrationError("authorization_code clients need a redirect_uri")
    for uri in redirect_uris:
        validate_redirect_uri(uri)
    if not name.strip():
        raise ClientRegistrationError("name must not be empty")
    secret = None if public else secrets.token_urlsafe(32)
    now = utcnow()
    row = Client(
        client_id=client_id or new_client_id(),
        name=name,
        secret_hash=hash_client_secret(secret) if secret else None,
        token_endpoint_auth_method=method,
        grant_types=list(grant_types),
        redirect_uris=list(redirect_uris),
        scope=" ".join(dict.fromkeys(scope.split())),
        active=True,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return _record(row), secret


def set_client_active(session: Session, client_id: str, active: bool) -> bool:
    """Activate or deactivate a client; True if it exists."""
    result = session.execute(
        update(Client)
        .where(Client.client_id == client_id)
        .values(active=active, updated_at=utcnow())
    )
    return result.rowcount > 0
