"""The public keys that verify a `private_key_jwt` client's assertions (RFC 7523 §2.2;
RFC 7591 §2 `jwks`, `jwks_uri`).

A client registered with `jwks` is verified against those keys (its record, cached with
the client and dropped on every change). A client registered with `jwks_uri` has its JWK
Set fetched with httpx and kept per worker:

- fetched at most `FETCH_TIMEOUT` seconds (whole exchange), at most `MAX_BYTES` of body,
  status 200, no redirect followed, JSON that passes the registration rules
  (`registry.client_keys.check_jwks`); otherwise `KeySetUnavailable`, remembered for
  `RETRY_AFTER` seconds so a flood of assertions cannot turn into a flood of fetches;
- kept `OAUTH2_CLIENT_JWKS_CACHE_TTL` seconds in a `cachetools.TTLCache` of at most
  `max_entries` URIs (least recently used dropped first);
- fetched again before then when an assertion names a `kid` the cached set lacks (key
  rotation), at most once per `RETRY_AFTER` seconds per URI;
- `http` (registered only on a loopback address) is fetched in development only; in
  production such a URI is `KeySetUnavailable`.

A key removed at the client's `jwks_uri` stays usable here until the cache entry expires:
that is the documented bound (README "private_key_jwt client authentication"). Keys in
`jwks` change at once, as every client change does.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from cachetools import TTLCache

from oauth2_server.registry.client_keys import check_jwks
from oauth2_server.registry.errors import FieldInvalid
from oauth2_server.storage.clients import ClientRecord

FETCH_TIMEOUT = 3.0  # seconds for the whole fetch
MAX_BYTES = 65_536  # of a fetched JWK Set
RETRY_AFTER = 60.0  # seconds between refetches for an unknown kid, and after a failure


class KeySetUnavailable(Exception):
    """The client's JWK Set could not be fetched or is not acceptable (`description`)."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class ClientKeySets:
    """Each `private_key_jwt` client's public keys (module docstring). `production`: fetch
    `https` only; `ttl`: seconds a fetched set is reused; `transport`: an httpx transport
    (tests may pass one; default: the network)."""

    def __init__(
        self,
        production: bool,
        ttl: float,
        max_entries: int = 1000,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.production = production
        self.fetches = 0  # fetches started (tests and metrics)
        self._sets: TTLCache[str, list[dict[str, Any]]] = TTLCache(max_entries, max(ttl, 1e-9))
        self._refetched: TTLCache[str, bool] = TTLCache(max_entries, RETRY_AFTER)
        self._failed: TTLCache[str, str] = TTLCache(max_entries, RETRY_AFTER)
        self._locks: TTLCache[str, asyncio.Lock] = TTLCache(max_entries, 2 * FETCH_TIMEOUT)
        self._transport = transport

    async def keys(self, record: ClientRecord, kid: str | None) -> list[dict[str, Any]]:
        """The keys that may verify `record`'s assertion naming `kid` (None: none named).
        Raises KeySetUnavailable."""
        if record.jwks is not None:
            return list(record.jwks.get("keys", []))
        if record.jwks_uri is None:
            raise KeySetUnavailable("the client has no registered keys")
        return await self._key_set(record.jwks_uri, kid)

    def _usable(self, uri: str, kid: str | None) -> list[dict[str, Any]] | None:
        cached = self._sets.get(uri)
        if cached is None:
            return None
        if kid is None or any(key.get("kid") == kid for key in cached) or uri in self._refetched:
            return cached
        return None

    async def _key_set(self, uri: str, kid: str | None) -> list[dict[str, Any]]:
        found = self._usable(uri, kid)
        if found is not None:
            return found
        lock = self._locks.get(uri)
        if lock is None:
            lock = self._locks[uri] = asyncio.Lock()
        async with lock:  # one fetch per URI at a time; others wait and reuse it
            found = self._usable(uri, kid)
            if found is not None:
                return found
            failed = self._failed.get(uri)
            if failed is not None:
                raise KeySetUnavailable(failed)
            refetch = uri in self._sets
            try:
                keys = await self._fetch(uri)
            except KeySetUnavailable as exc:
                self._failed[uri] = exc.description
                raise
            if refetch:
                self._refetched[uri] = True
            self._sets[uri] = keys
            return keys

    async def _fetch(self, uri: str) -> list[dict[str, Any]]:
        """GET `uri` within the bounds (module docstring). Raises KeySetUnavailable."""
        if self.production and not uri.startswith("https://"):
            raise KeySetUnavailable("the client's jwks_uri is not https")
        self.fetches += 1
        try:
            async with asyncio.timeout(FETCH_TIMEOUT):
                body = await self._get(uri)
        except TimeoutError:
            raise KeySetUnavailable("the client's jwks_uri did not answer in time") from None
        except httpx.HTTPError as exc:
            raise KeySetUnavailable(f"the client's jwks_uri failed: {type(exc).__name__}") from None
        try:
            return list(check_jwks(json.loads(body))["keys"])
        except (ValueError, FieldInvalid):
            raise KeySetUnavailable("the client's jwks_uri holds no acceptable JWK Set") from None

    async def _get(self, uri: str) -> bytes:
        timeout = httpx.Timeout(FETCH_TIMEOUT)
        async with (
            httpx.AsyncClient(transport=self._transport, timeout=timeout) as client,
            client.stream("GET", uri, headers={"Accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise KeySetUnavailable(f"the client's jwks_uri answered {response.status_code}")
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_BYTES:
                    raise KeySetUnavailable(f"the client's JWK Set is over {MAX_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
