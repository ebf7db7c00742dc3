"""Client records as Authlib sees them, and cheap, safe client authentication.

- `parse_client_credentials` is the one place that reads client credentials from a request
  (RFC 6749 §2.3.1: HTTP Basic, RFC 7617, or the form body). A client id is 1–64
  characters of VSCHAR (%x20-7E, RFC 6749 Appendix A.1), a secret at most
  `MAX_SECRET_LENGTH` VSCHAR; anything else (an empty or garbled Basic header, non-UTF-8,
  a NUL or other control character, an over-long id) is `BadClientCredentials`, answered
  `invalid_client` before any database lookup.
- Client secrets are stored as `sha256$<hex>` (`crypto.hashing`): verification is a
  constant-time compare on the event loop, so a wrong-secret flood costs microseconds and
  nothing is cached. Hashes written before that form (argon2id) verify through
  `Argon2Slots` and are replaced at their next successful use.
- `Argon2Slots` runs argon2 verifications (legacy client secrets, user passwords) off the
  loop: `OAUTH2_ARGON2_CONCURRENCY` at once, `OAUTH2_ARGON2_QUEUE` more waiting; beyond
  that `Argon2Busy` at once (answered 503 with `Retry-After`).
- `ClientCache` keeps immutable `ClientRecord`s for `OAUTH2_CLIENT_CACHE_TTL` seconds,
  dropped at once in this process when the client changes (`invalidate`).

Failure limits live in `oauth.throttling`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from authlib.oauth2.rfc6749 import ClientMixin

from oauth2_server.crypto.hashing import verify_secret
from oauth2_server.storage.clients import ClientRecord

MAX_CLIENT_ID_LENGTH = 64  # the oauth2_clients.client_id column
MAX_SECRET_LENGTH = 512  # server-generated secrets are 43 characters


class BadClientCredentials(Exception):
    """Client credentials that cannot be valid (RFC 6749 §5.2 `invalid_client`): `basic`
    is True when they came in an HTTP Basic header (answered 401 with
    `WWW-Authenticate`), False for the form body (400)."""

    def __init__(self, description: str, basic: bool) -> None:
        super().__init__(description)
        self.description = description
        self.basic = basic


@dataclass(frozen=True)
class ClientCredentials:
    """What a request presented: `client_id`, the `secret` (None when it sent none) and
    whether they came by HTTP Basic (`client_secret_basic`) or the form."""

    client_id: str
    secret: str | None
    basic: bool


def _vschar(value: str, limit: int) -> bool:
    """1..limit characters, each VSCHAR (%x20-7E, RFC 6749 Appendix A)."""
    return 0 < len(value) <= limit and all(" " <= ch <= "~" for ch in value)


def _check(client_id: str, secret: str | None, basic: bool) -> None:
    if not _vschar(client_id, MAX_CLIENT_ID_LENGTH):
        raise BadClientCredentials(
            f"client_id must be 1-{MAX_CLIENT_ID_LENGTH} printable ASCII characters", basic
        )
    if secret is not None and not _vschar(secret, MAX_SECRET_LENGTH):
        raise BadClientCredentials(
            f"client_secret must be 1-{MAX_SECRET_LENGTH} printable ASCII characters", basic
        )


def _basic(header: str) -> ClientCredentials | None:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None  # another scheme: not client authentication (Authlib ignores it too)
    token = token.strip()
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        raise BadClientCredentials("malformed HTTP Basic credentials", True) from None
    if not token or ":" not in decoded:
        raise BadClientCredentials("malformed HTTP Basic credentials", True)
    raw_id, raw_secret = decoded.split(":", 1)
    # RFC 6749 §2.3.1: both are form-urlencoded before Basic encoding (Authlib unquotes).
    client_id = unquote(raw_id, errors="strict")
    secret = unquote(raw_secret, errors="strict") or None
    _check(client_id, secret, True)
    return ClientCredentials(client_id, secret, True)


def parse_client_credentials(
    headers: Mapping[str, str], form: Mapping[str, str]
) -> ClientCredentials | None:
    """The client credentials a request presents (RFC 6749 §2.3.1), or None for none.

    HTTP Basic (RFC 7617) wins over the form's `client_id`/`client_secret`; a form
    `client_id` is checked even then, as Authlib may read it. Raises BadClientCredentials
    for anything that cannot be a valid client id or secret (see the module docstring).
    """
    form_id = form.get("client_id")
    form_secret = form.get("client_secret")
    if form_id is not None:
        _check(form_id, form_secret, False)
    header = headers.get("authorization")
    if header is not None:
        try:
            found = _basic(header)
        except UnicodeDecodeError:  # unquote(errors="strict") of a non-UTF-8 escape
            raise BadClientCredentials("malformed HTTP Basic credentials", True) from None
        if found is not None:
            return found
    if form_id is None:
        return None
    return ClientCredentials(form_id, form_secret, False)


@dataclass(frozen=True)
class OAuthClient(ClientMixin):
    """Authlib's view of one client for one request (RFC 6749 §2; RFC 7591 names).

    `verified_secret` is the secret this request presented if `_preauthenticate` accepted
    it; `check_client_secret` compares against it in constant time.
    """

    record: ClientRecord
    verified_secret: str | None = None

    def __repr__(self) -> str:
        """Authlib logs clients with %r at DEBUG: the id only, never the secret or hash."""
        return f"OAuthClient({self.record.client_id!r})"

    @property
    def client_id(self) -> str:
        return self.record.client_id

    @property
    def scope(self) -> str:
        return self.record.scope

    def get_client_id(self) -> str:
        return self.record.client_id

    def get_default_redirect_uri(self) -> str | None:
        """The registered URI if there is exactly one; otherwise the request must name one."""
        uris = self.record.redirect_uris
        return uris[0] if len(uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """Requested scope if within the registration (None if not); all of it if omitted
        (RFC 6749 §3.3 default)."""
        if not scope:
            return self.record.scope
        requested = scope.split()
        if not set(requested) <= self.record.scopes:
            return None
        return " ".join(dict.fromkeys(requested))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        """Exact string match against a registered URI (RFC 9700 §4.1.3)."""
        return redirect_uri in self.record.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        if self.verified_secret is None:
            return False
        return hmac.compare_digest(self.verified_secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        """Only the registered method, on every endpoint: a confidential client cannot
        authenticate with `none`."""
        return method == self.record.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.record.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.record.grant_types


class ClientCache:
    """client_id → ClientRecord for `ttl` seconds (the cross-process staleness bound)."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, ClientRecord]] = OrderedDict()

    def get(self, client_id: str) -> ClientRecord | None:
        entry = self._entries.get(client_id)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, record: ClientRecord) -> None:
        self._entries[record.client_id] = (time.monotonic() + self.ttl, record)
        self._entries.move_to_end(record.client_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, client_id: str | None = None) -> None:
        """Drop one client (or all) after a change made by this process."""
        if client_id is None:
            self._entries.clear()
        else:
            self._entries.pop(client_id, None)


class Argon2Busy(Exception):
    """Every argon2 slot and queue place of this worker is taken: answer 503 with
    `Retry-After: retry_after` (seconds) at once."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"argon2 queue full; retry after {retry_after} s")
        self.retry_after = retry_after


class Argon2Slots:
    """Bounded argon2 work per worker: `concurrency` verifications run at once in threads,
    at most `queue` more wait; a caller beyond that gets `Argon2Busy` without waiting.
    `runs` counts verifications started (exposed in /metrics)."""

    RETRY_AFTER = 1  # seconds; a queue place frees within ~100 ms per slot

    def __init__(self, concurrency: int, queue: int) -> None:
        self.capacity = concurrency + queue
        self.admitted = 0
        self.runs = 0
        self.refused = 0
        self._slots = asyncio.Semaphore(concurrency)

    async def verify(self, password_hash: str, secret: str) -> bool:
        """argon2id verification of `secret` in a worker thread (`crypto.hashing`).

        Raises Argon2Busy when `concurrency + queue` callers are already admitted."""
        if self.admitted >= self.capacity:
            self.refused += 1
            raise Argon2Busy(self.RETRY_AFTER)
        self.admitted += 1
        try:
            async with self._slots:
                self.runs += 1
                return await asyncio.to_thread(verify_secret, password_hash, secret)
        finally:
            self.admitted -= 1
