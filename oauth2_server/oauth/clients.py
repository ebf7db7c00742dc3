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
- `ClientCache` keeps immutable `ClientRecord`s (at most `OAUTH2_CLIENT_CACHE_TTL` seconds
  each), dropped in every worker when the client changes, and checked against the row's
  `version` at every use (see its docstring).

Failure limits live in `oauth.throttling`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from authlib.oauth2.rfc6749 import ClientMixin
from cachetools import TTLCache

from oauth2_server import metrics
from oauth2_server.crypto.hashing import verify_secret
from oauth2_server.oauth.assertions import (
    ASSERTION_TYPE,
    AssertionRefused,
    unverified_subject,
    well_formed,
)
from oauth2_server.registry.redirect_uris import loopback_host
from oauth2_server.storage.clients import ClientRecord

log = logging.getLogger(__name__)

MAX_CLIENT_ID_LENGTH = 64  # the oauth2_clients.client_id column
MAX_SECRET_LENGTH = 512  # server-generated secrets are 43 characters


class BadClientCredentials(Exception):
    """Client credentials that cannot be valid (RFC 6749 §5.2 `invalid_client`): `basic`
    is True when they came in an HTTP Basic header (answered 401 with
    `WWW-Authenticate`), False for the form body (400)."""

    error = "invalid_client"

    def __init__(self, description: str, basic: bool) -> None:
        super().__init__(description)
        self.description, self.basic = description, basic


class MultipleAuthMethods(BadClientCredentials):
    """A request that uses more than one client authentication method (RFC 6749 §2.3:
    "The client MUST NOT use more than one authentication method in each request"):
    RFC 6749 §5.2 `invalid_request`, HTTP 400, refused before any secret is compared.
    `client_ids` are the (already validated) ids the request named, for the audit row."""

    error = "invalid_request"

    def __init__(self, description: str, client_ids: tuple[str, ...]) -> None:
        super().__init__(description, basic=False)
        self.client_ids = client_ids


@dataclass(frozen=True)
class ClientCredentials:
    """What a request presented: `client_id`, the `secret` (None when it sent none) and
    whether they came by HTTP Basic (`client_secret_basic`) or the form."""

    client_id: str
    secret: str | None
    basic: bool
    assertion: str | None = None  # RFC 7523 §2.2 client_assertion (private_key_jwt)


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

    One method per request (RFC 6749 §2.3): HTTP Basic (`client_secret_basic`, RFC 7617),
    the form's `client_id` + `client_secret` (`client_secret_post`), or the form's
    `client_id` alone (`none`, a public client, §2.1, §3.2.1). With HTTP Basic, the form
    may still carry `client_id` naming the same client (§3.2.1: a client "MAY use the
    client_id request parameter to identify itself"; libraries such as requests-oauthlib
    send it), but never a `client_secret` and never another client's id: those are two
    methods, `MultipleAuthMethods` (`invalid_request`). A parameter without a value was
    dropped by the form parser (§3.1: treated as omitted).

    Raises BadClientCredentials (`invalid_client`) for anything that cannot be a valid
    client id or secret (see the module docstring), including a form `client_secret`
    without a `client_id`; every id and secret is checked before any comparison.
    """
    form_id = form.get("client_id")
    form_secret = form.get("client_secret")
    if "client_assertion" in form or "client_assertion_type" in form:
        return _assertion(headers, form)
    if form_id is not None:
        _check(form_id, form_secret, False)
    header = headers.get("authorization")
    found = None
    if header is not None:
        try:
            found = _basic(header)
        except UnicodeDecodeError:  # unquote(errors="strict") of a non-UTF-8 escape
            raise BadClientCredentials("malformed HTTP Basic credentials", True) from None
    if found is not None:
        if form_secret is not None:
            raise MultipleAuthMethods(
                "the request uses two client authentication methods, HTTP Basic and a "
                "client_secret in the body; use exactly one (RFC 6749 section 2.3)",
                (found.client_id,) + ((form_id,) if form_id and form_id != found.client_id else ()),
            )
        if form_id is not None and form_id != found.client_id:
            raise MultipleAuthMethods(
                "the client_id in the body names another client than the HTTP Basic "
                "credentials; authenticate one client with one method (RFC 6749 section 2.3)",
                (found.client_id, form_id),
            )
        return found
    if form_id is None:
        if form_secret is not None:
            raise BadClientCredentials("client_secret was sent without client_id", False)
        return None
    return ClientCredentials(form_id, form_secret, False)


def _assertion(headers: Mapping[str, str], form: Mapping[str, str]) -> ClientCredentials:
    """RFC 7521 §4.2 / RFC 7523 §2.2 credentials: `client_assertion_type` (the JWT bearer
    URN) and a well-formed `client_assertion` whose `sub` names the client; a form
    `client_id`, optional, must name the same one. With HTTP Basic or a `client_secret`
    it is two methods (`MultipleAuthMethods`); anything else malformed is
    BadClientCredentials (`invalid_client`)."""
    form_id = form.get("client_id")
    if "client_secret" in form or _basic_scheme(headers.get("authorization")):
        raise MultipleAuthMethods(
            "the request sends a client_assertion and a client secret; use exactly one "
            "client authentication method (RFC 6749 section 2.3)",
            (form_id,) if form_id and _vschar(form_id, MAX_CLIENT_ID_LENGTH) else ("-",),
        )
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise BadClientCredentials(f"client_assertion_type must be {ASSERTION_TYPE}", False)
    assertion = form.get("client_assertion", "")
    if not well_formed(assertion):
        raise BadClientCredentials("client_assertion is not a JWS compact serialization", False)
    try:
        sub, _ = unverified_subject(assertion)
    except AssertionRefused as bad:
        raise BadClientCredentials(bad.description, False) from None
    if sub is None or not _vschar(sub, MAX_CLIENT_ID_LENGTH):
        raise BadClientCredentials("the client_assertion's sub is not a client_id", False)
    if form_id is not None and form_id != sub:
        raise BadClientCredentials("client_id is not the client_assertion's sub", False)
    return ClientCredentials(sub, None, False, assertion)


def _basic_scheme(header: str | None) -> bool:
    return header is not None and header.strip().partition(" ")[0].lower() == "basic"


def presented_method(credentials: ClientCredentials | None) -> str | None:
    """The RFC 7591 §2 `token_endpoint_auth_method` a request used: `client_secret_basic`,
    `client_secret_post`, `none`, or None when it presented no client credentials. HTTP
    Basic with an empty password is a secret-less presentation (`none`)."""
    if credentials is None:
        return None
    if credentials.assertion is not None:
        return "private_key_jwt"
    if credentials.secret is None:
        return "none"
    return "client_secret_basic" if credentials.basic else "client_secret_post"


# RFC 7591 §2 method names in plain words, for error descriptions.
METHOD_WORDS = {
    "client_secret_basic": "client_secret_basic (HTTP Basic with its client_secret)",
    "client_secret_post": "client_secret_post (client_id and client_secret in the form body)",
    "none": "none (a public client: client_id in the form body, no secret)",
    "private_key_jwt": "private_key_jwt (a client_assertion signed with its key, RFC 7523)",
}


def loopback_without_port(uri: str) -> str | None:
    """`uri` without its port if it is an RFC 8252 §7.3 loopback redirect URI
    (`http://127.0.0.1[:port]/…` or `http://[::1][:port]/…`, port 1-65535), else None.
    `localhost` is not a loopback IP literal (§8.3); path and query are kept exactly."""
    prefix = "http://"
    if not uri.startswith(prefix) or "#" in uri:
        return None
    end = min((i for i in (uri.find("/", 7), uri.find("?", 7)) if i != -1), default=len(uri))
    host = loopback_host(uri[len(prefix) : end])
    return None if host is None else f"{prefix}{host}{uri[end:]}"


@dataclass(frozen=True)
class OAuthClient(ClientMixin):
    """Authlib's view of one client for one request (RFC 6749 §2; RFC 7591 names).

    `verified_secret` is the secret this request presented if `_preauthenticate` accepted
    it; `check_client_secret` compares against it in constant time. `verified_assertion`:
    `_preauthenticate` accepted this request's `private_key_jwt` assertion against this
    record's keys (`oauth.assertions`).
    """

    record: ClientRecord
    verified_secret: str | None = None
    verified_assertion: bool = False

    def __repr__(self) -> str:
        """Authlib logs clients with %r at DEBUG: the id only, never the secret or hash."""
        return f"OAuthClient({self.record.client_id!r})"

    @property
    def client_id(self) -> str:
        """RFC 6749 §2.2 client identifier."""
        return self.record.client_id

    def get_client_id(self) -> str:
        """Authlib's accessor for `client_id`."""
        return self.client_id

    @property
    def scope(self) -> str:
        """The registered scope (RFC 6749 §3.3), space-separated."""
        return self.record.scope

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
        """Exact string match against a registered URI (RFC 9700 §4.1.3), with one
        exception: for a loopback IP literal redirect (`http://127.0.0.1…`,
        `http://[::1]…`) any port is allowed at request time (RFC 8252 §7.3), whether the
        registered URI has a port or not; everything but the port still matches exactly.
        """
        if redirect_uri in self.record.redirect_uris:
            return True
        portless = loopback_without_port(redirect_uri)
        return portless is not None and any(
            loopback_without_port(uri) == portless for uri in self.record.redirect_uris
        )

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
    """client_id → the `ClientRecord` this worker last read: a `cachetools.TTLCache` of at
    most `max_entries` (the least recently used dropped first), each reused for at most
    `ttl` seconds (`timer`: monotonic seconds) before it is read again.

    `ttl` is not a staleness bound. A change reaches every worker at once: `invalidate` is
    called by the PostgreSQL NOTIFY listener (`storage.client_notify`) and by the worker
    that made the change, and every use of a record is checked against the row's
    `version` before an answer goes out (`Bridge.run_deferred`, `query_client`), which
    calls `stale` for a record found behind. So a cached record never acts on an old state.

    `generation` goes up at every invalidation: a record read before one and offered to
    `put` after it (`put(record, generation)`) is not cached, as it may predate the change.
    `stale_records` counts records found behind at use.
    """

    def __init__(
        self, ttl: float, max_entries: int = 10_000, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.generation = 0
        self.stale_records = 0
        self._entries: TTLCache[str, ClientRecord] = TTLCache(max_entries, ttl, timer)

    def get(self, client_id: str) -> ClientRecord | None:
        """The cached record of `client_id`, or None (never read, expired or dropped)."""
        try:  # a hit is the common case: one cache lookup (`get` would take two)
            return self._entries[client_id]
        except KeyError:
            return None

    def put(self, record: ClientRecord, generation: int | None = None) -> None:
        """Cache `record`, unless an invalidation happened since `generation` (the value of
        `self.generation` when the read began)."""
        if generation is not None and generation != self.generation:
            return
        self._entries[record.client_id] = record

    def __len__(self) -> int:
        """Records held now (expired ones included until the next `put` drops them)."""
        return len(self._entries)

    def invalidate(self, client_id: str | None = None) -> None:
        """Drop one client (or all, `None`): it changed, or may have."""
        self.generation += 1
        if client_id is None:
            self._entries.clear()
        else:
            self._entries.pop(client_id, None)

    def stale(self, record: ClientRecord) -> None:
        """A use found `record` behind the client row (changed or deleted): count it, log
        it at DEBUG and drop it, so the next request reads the row."""
        self.stale_records += 1
        log.debug(
            "client %s: cached record (version %d) was behind the database; reading it again",
            record.client_id,
            record.version,
        )
        self.invalidate(record.client_id)


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
            metrics.ARGON2_BUSY.inc()
            raise Argon2Busy(self.RETRY_AFTER)
        self.admitted += 1
        try:
            async with self._slots:
                self.runs += 1
                metrics.ARGON2_RUNS.inc()
                return await asyncio.to_thread(verify_secret, password_hash, secret)
        finally:
            self.admitted -= 1
