"""Client records as Authlib sees them, and cheap, safe client authentication.

RFC 6749 §2.3.1 client secrets are argon2id hashes (~100 ms to verify). So that a
service asking for tokens all day does not pay that each time, and a flood of wrong
secrets cannot stall the server:

- `SecretVerifier` verifies off the event loop in a bounded thread pool, and remembers a
  *successful* verification for `OAUTH2_SECRET_CACHE_TTL` seconds as
  HMAC-SHA256(process-random key, client_id ‖ stored hash ‖ presented secret). The secret
  is never kept; a changed secret changes the stored hash, so old entries stop matching.
- `FailureLimiter` counts failed authentications per client id and per IP; over
  `OAUTH2_CLIENT_AUTH_FAILURE_LIMIT` in the window, uncached attempts are refused (429)
  before any argon2 work.
- `ClientCache` keeps immutable `ClientRecord`s for `OAUTH2_CLIENT_CACHE_TTL` seconds,
  dropped at once in this process when the client changes (`invalidate`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from authlib.oauth2.rfc6749 import ClientMixin

from oauth2_server.crypto.hashing import verify_secret
from oauth2_server.storage.clients import ClientRecord


@dataclass(frozen=True)
class OAuthClient(ClientMixin):
    """Authlib's view of one client for one request (RFC 6749 §2; RFC 7591 names).

    `verified_secret` is the secret this request presented if `SecretVerifier` accepted
    it; `check_client_secret` compares against it in constant time.
    """

    record: ClientRecord
    verified_secret: str | None = None

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


class FailureLimiter:
    """Sliding-window counts of failed client authentications per key (client id, IP)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        cutoff = time.monotonic() - self.window
        while times and times[0] < cutoff:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def blocked(self, *keys: str) -> float:
        """Seconds until an attempt is allowed again (0 when allowed)."""
        wait = 0.0
        for key in keys:
            times = self._recent(key)
            if times is not None and len(times) >= self.limit:
                wait = max(wait, times[0] + self.window - time.monotonic())
        return wait

    def fail(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            self._failures.setdefault(key, deque()).append(now)
        if len(self._failures) > 100_000:  # bound memory under a spray of keys
            for key in list(self._failures)[:50_000]:
                self._recent(key)


class SecretVerifier:
    """argon2id verification off the loop, with a keyed cache of successes."""

    def __init__(self, ttl: float, concurrency: int, max_entries: int = 50_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._key = secrets.token_bytes(32)  # per process; never persisted
        self._ok: OrderedDict[bytes, float] = OrderedDict()
        self._slots = asyncio.Semaphore(concurrency)

    def _cache_key(self, record: ClientRecord, secret: str) -> bytes:
        message = b"\0".join(
            (record.client_id.encode(), (record.secret_hash or "").encode(), secret.encode())
        )
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def cached(self, record: ClientRecord, secret: str) -> bool:
        """True if this exact secret verified for this stored hash within the TTL."""
        key = self._cache_key(record, secret)
        expires = self._ok.get(key)
        return expires is not None and expires > time.monotonic()

    async def verify(self, record: ClientRecord, secret: str) -> bool:
        """Verify `secret` against the record's argon2id hash (cache first)."""
        if record.secret_hash is None:
            return False
        if self.cached(record, secret):
            return True
        ok = await self.check(record.secret_hash, secret)
        if ok:
            self._ok[self._cache_key(record, secret)] = time.monotonic() + self.ttl
            while len(self._ok) > self.max_entries:
                self._ok.popitem(last=False)
        return ok

    async def check(self, secret_hash: str, secret: str) -> bool:
        """One argon2id verification in a worker thread, at most `concurrency` at once."""
        async with self._slots:
            return await asyncio.to_thread(verify_secret, secret_hash, secret)
