"""Registered clients (RFC 6749 §2; RFC 7591 metadata names)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from oauth2_server.crypto.hashing import hash_client_secret
from oauth2_server.db.models import Client
from oauth2_server.storage import utcnow
from oauth2_server.storage.client_notify import note_client_changed
from oauth2_server.storage.subjects import IDENTIFIER, SubjectTaken, claim_subject

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
    """An immutable snapshot of a client row, safe to cache between changes: `version` is
    the row's version when read (every change bumps it; `storage.client_registry`)."""

    client_id: str
    name: str
    secret_hash: str | None = field(repr=False)
    token_endpoint_auth_method: str
    grant_types: tuple[str, ...]
    redirect_uris: tuple[str, ...]
    scope: str
    active: bool
    updated_at: datetime
    version: int = 1

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
        version=row.version,
    )


def get_client(session: Session, client_id: str) -> ClientRecord | None:
    """The client with this id (active or not), or None."""
    row = session.scalars(select(Client).where(Client.client_id == client_id)).first()
    return _record(row) if row else None


def count_clients(session: Session) -> int:
    """Number of registered clients (the first-run bootstrap checks for zero)."""
    return session.scalar(select(func.count()).select_from(Client)) or 0


MAX_REDIRECT_URI_LENGTH = 2000
LOOPBACK_HOSTS = ("127.0.0.1", "[::1]")  # RFC 8252 §7.3 loopback IP literals
# RFC 3986 §3.1 scheme, reverse-domain form (RFC 8252 §7.1): labels joined by periods.
_PRIVATE_SCHEME = re.compile(r"[a-z][a-z0-9+-]*(\.[a-z0-9+-]+)+")
_URI_CHARS = re.compile(r"[\x21-\x7e]+")  # RFC 3986: visible ASCII, no spaces


def validate_redirect_uri(uri: str) -> None:
    """A redirect URI a client may register (RFC 6749 §3.1.2, RFC 9700 §2.1, RFC 8252 §7):

    - `https://host/…`: web clients and claimed https URIs of native apps (RFC 8252 §7.2);
    - `http://127.0.0.1[:port]/…` or `http://[::1][:port]/…`: native apps' loopback
      redirect (RFC 8252 §7.3; any port matches at request time, `OAuthClient`);
      `http://localhost` is refused (RFC 8252 §8.3: NOT RECOMMENDED, it may resolve off
      the machine), as is any other `http` host;
    - a private-use scheme in reverse-domain form, e.g. `com.example.app:/oauth/callback`
      (RFC 8252 §7.1); a scheme without a period (`myapp:`, `javascript:`, `data:`) is
      refused (RFC 8252 §8.4: "any private-use URI scheme that doesn't contain a period
      character SHOULD be rejected").

    Never a fragment (RFC 6749 §3.1.2), user information, whitespace, non-ASCII, or more
    than MAX_REDIRECT_URI_LENGTH characters. Raises ClientRegistrationError naming the URI
    and the rule.
    """
    shown = uri if len(uri) <= 200 else uri[:200] + "..."
    if not uri or len(uri) > MAX_REDIRECT_URI_LENGTH or not _URI_CHARS.fullmatch(uri):
        raise ClientRegistrationError(
            f"redirect_uri {shown!r} must be 1-{MAX_REDIRECT_URI_LENGTH} visible ASCII "
            "characters (RFC 3986)"
        )
    parts = urlsplit(uri)
    if "#" in uri:
        raise ClientRegistrationError(
            f"redirect_uri {shown!r} must not contain a fragment (RFC 6749 section 3.1.2)"
        )
    scheme = parts.scheme
    if not scheme or not uri.startswith(scheme + ":"):  # urlsplit lower-cases the scheme
        raise ClientRegistrationError(
            f"redirect_uri {shown!r} must start with a lower-case scheme: https, loopback "
            "http, or a reverse-domain private-use scheme (RFC 8252 section 7)"
        )
    if "@" in parts.netloc:
        raise ClientRegistrationError(f"redirect_uri {shown!r} must not carry user information")
    if scheme == "https":
        if not parts.hostname:
            raise ClientRegistrationError(f"redirect_uri {shown!r} must name a host")
        return
    if scheme == "http":
        if loopback_host(parts.netloc) is None:
            raise ClientRegistrationError(
                f"redirect_uri {shown!r} must use https; plain http only for the loopback IP "
                "literals 127.0.0.1 and [::1] (RFC 8252 section 7.3; localhost is not "
                "accepted, section 8.3)"
            )
        return
    if not _PRIVATE_SCHEME.fullmatch(scheme) or scheme.startswith(("http.", "https.")):
        raise ClientRegistrationError(
            f"redirect_uri {shown!r}: scheme {scheme!r} is neither https, loopback http, nor "
            "a private-use scheme in reverse-domain form such as com.example.app "
            "(RFC 8252 sections 7.1 and 8.4)"
        )
    if not parts.path and not parts.netloc:
        raise ClientRegistrationError(
            f"redirect_uri {shown!r} needs a path after the scheme, e.g. "
            f"{scheme}:/oauth/callback (RFC 8252 section 7.1)"
        )


def loopback_host(netloc: str) -> str | None:
    """The host of an RFC 8252 §7.3 loopback authority (`127.0.0.1` or `[::1]`, with an
    optional port 1-65535), else None."""
    for host in LOOPBACK_HOSTS:
        if netloc == host:
            return host
        if netloc.startswith(host + ":"):
            port = netloc[len(host) + 1 :]
            if port.isdigit() and len(port) <= 5 and 0 < int(port) <= 65535:
                return host
    return None


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
    client asking for client_credentials, an authorization-code client without a
    valid redirect URI, or a `client_id` that is taken by a client or a user's subject
    (RFC 9700 §4.15, `storage.subjects`).
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
    client_id = client_id or new_client_id()
    if not IDENTIFIER.fullmatch(client_id):
        raise ClientRegistrationError("client_id may use only A-Z a-z 0-9 . _ ~ - (1-64)")
    try:
        claim_subject(session, client_id)  # RFC 9700 §4.15: one `sub` namespace
    except SubjectTaken as taken:
        raise ClientRegistrationError(str(taken)) from None
    secret = None if public else secrets.token_urlsafe(32)
    now = utcnow()
    row = Client(
        client_id=client_id,
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
    """Activate or deactivate a client (bumping its `version` and notifying every worker,
    like `storage.client_registry`); True if it exists."""
    result = session.execute(
        update(Client)
        .where(Client.client_id == client_id)
        .values(active=active, updated_at=utcnow(), version=Client.version + 1)
    )
    if not result.rowcount:
        return False
    note_client_changed(session, client_id)
    return True
