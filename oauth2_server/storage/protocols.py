"""The storage contracts of the token flows, one `typing.Protocol` per flow (STYLE.md:
"make the contract a type, so a second implementation cannot drift").

- token issue (RFC 6749 §5.1), inside Authlib's hooks: `IssueWriter`, implemented by
  `SessionWriter` (writes in the request's transaction) and `IssueBatch` (collects the
  rows for the hot path);
- audit write (DESIGN.md invariant 6): `AuditWriter`, the same two;
- writing a collected issue: `IssueStore`, implemented by `fastpath_pg.PgFastStore` (one
  asyncpg statement) and `fastpath.FastStore` (SQLAlchemy, through `SessionWriter`);
- refresh rotation (RFC 6749 §6; RFC 9700 §4.14.2): `RefreshRotation`, `SessionWriter`
  only: rotation always runs in the request's transaction, on every backend;
- introspection read (RFC 7662 §2.2): `IntrospectionReader`, `PgFastStore` (coalesced)
  and `FastStore`;
- exchange read (RFC 8693 §2.1): `ExchangeReader`, the same two.
- single-use `jti` (RFC 9449 §11.1, RFC 7523 §3 item 7): `JtiClaims`, the same two
  (`storage.used_jtis`: the rule, both writers).

Each row has one definition (`storage.tokens.access_token_values`, `AuditEvent.row()`)
that every writer binds; each read is one statement builder (`storage.introspection`,
`storage.exchange`).

Each row has one write path per backend. The access-token row: on SQLite (and any
engine but PostgreSQL) the session's INSERT (`storage.tokens.insert_access_token`), which
`FastStore` also uses to write a collected batch; on PostgreSQL the hot path's statement
(`PgFastStore.issue`), for every grant: a request that runs in a session (authorization
code, refresh) collects its access-token row in `SessionWriter.access_tokens`, and
`Bridge.run` writes it through `issue` before the session commits. If that commit then
fails, the row stays without its grant: a token never handed out, which expires.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from sqlalchemy.orm import Session

from oauth2_server.audit.log import AuditEvent, record
from oauth2_server.storage import tokens as token_storage
from oauth2_server.storage.client_state import ClientGuard, IntrospectionRead
from oauth2_server.storage.exchange import ExchangePrefetch
from oauth2_server.storage.tokens import AccessTokenRecord, RefreshRedemption, RevokedToken


class AuditWriter(Protocol):
    """Audit rows of state changes, committed with the change (DESIGN.md invariant 6)."""

    def record(self, *events: AuditEvent) -> None:
        """Write `events` with the change they describe (or with nothing, on rollback)."""


class IssueWriter(AuditWriter, Protocol):
    """Token issue (RFC 6749 §5.1): the access-token row (by `jti`) and its audit row."""

    def insert_access_token(self, record: AccessTokenRecord) -> None:
        """Store the row of a newly issued access token."""


class RefreshRotation(Protocol):
    """Refresh rotation and reuse detection (RFC 6749 §6; RFC 9700 §4.14.2); see
    `storage.tokens.redeem_refresh_token` for the rule. Times are UTC."""

    def redeem_refresh_token(
        self, token_hash: str, client_id: str, now: datetime, grace: float
    ) -> RefreshRedemption:
        """Use a presented refresh token (compare-and-set; one concurrent winner)."""

    def revoke_family(self, family_id: str, now: datetime) -> list[RevokedToken]:
        """Revoke every token of one grant; the tokens newly revoked."""


class JtiClaims(Protocol):
    """Single-use JWT ids for the whole deployment (`storage.used_jtis`)."""

    async def claim_jti(self, key: str, expires_at: datetime) -> bool:
        """Record `key` as used until `expires_at` (UTC, aware), durably before returning.
        True for exactly one of all concurrent claims of a key, on any worker or
        instance; False for a replay. Raises DatabaseUnavailable."""
        ...


class IssueStore(Protocol):
    """Writes an `IssueBatch` collected while Authlib ran without a session, and supplies
    the `SessionWriter` of a request that runs in a session (`session_writer`)."""

    async def issue(self, batch: IssueBatch, guard: ClientGuard | None) -> bool:
        """Write the batch in one transaction if `guard` holds (the client active at the
        guarded version, checked atomically with the writes). True if written (or
        empty); False if the guard failed: nothing written. Raises DatabaseUnavailable."""
        ...

    async def client_current(self, guard: ClientGuard) -> bool:
        """True if the client is still active at the guarded version (no write)."""
        ...

    def session_writer(self, session: Session) -> SessionWriter:
        """The writer of a request running in `session`: every row in the session, or,
        where this store writes access-token rows itself, those rows collected in the
        writer's `access_tokens` batch for `issue` (the caller writes them with
        `issue(batch, None)` before it commits the session)."""
        ...


class IntrospectionReader(Protocol):
    """RFC 7662 §2.2: the token row by `jti`, its client's `active` flag and the state
    of the client that asks, in one statement."""

    async def introspection(self, jti: str, caller_id: str | None) -> IntrospectionRead:
        """Raises DatabaseUnavailable."""
        ...


class ExchangeReader(Protocol):
    """RFC 8693 §2.1: the subject token's row and the exchange target in one statement."""

    async def prefetch_exchange(
        self, jti: str, client_id: str, branch_id: str, provider: str
    ) -> ExchangePrefetch:
        """Raises DatabaseUnavailable."""
        ...


@dataclass
class IssueBatch:
    """`IssueWriter` for Authlib calls that run without a session (the hot path): the
    rows are collected, typed, and written afterwards by an `IssueStore`."""

    access_tokens: list[AccessTokenRecord] = field(default_factory=list)
    events: list[AuditEvent] = field(default_factory=list)

    def insert_access_token(self, record: AccessTokenRecord) -> None:
        self.access_tokens.append(record)

    def record(self, *events: AuditEvent) -> None:
        self.events.extend(events)

    def __bool__(self) -> bool:
        return bool(self.access_tokens or self.events)

    def write_to(self, writer: IssueWriter) -> None:
        """Replay the collected rows on another writer (the SQLAlchemy `IssueStore`)."""
        for access in self.access_tokens:
            writer.insert_access_token(access)
        writer.record(*self.events)


class SessionWriter:
    """`IssueWriter`, `AuditWriter` and `RefreshRotation` on the request's `Session`:
    every write happens at once, in the request's transaction, except access-token rows
    when `access_tokens` is given: those are collected there for the backend's
    `IssueStore`, which writes them before the session commits (`Bridge.run`), so that
    on PostgreSQL the row has one write path, the hot path's statement."""

    def __init__(self, session: Session, access_tokens: IssueBatch | None = None) -> None:
        self.session = session
        self.access_tokens = access_tokens

    def insert_access_token(self, record: AccessTokenRecord) -> None:
        if self.access_tokens is not None:
            self.access_tokens.insert_access_token(record)
        else:
            token_storage.insert_access_token(self.session, record)

    def record(self, *events: AuditEvent) -> None:
        record(self.session, *events)

    def redeem_refresh_token(
        self, token_hash: str, client_id: str, now: datetime, grace: float
    ) -> RefreshRedemption:
        return token_storage.redeem_refresh_token(self.session, token_hash, client_id, now, grace)

    def revoke_family(self, family_id: str, now: datetime) -> list[RevokedToken]:
        return token_storage.revoke_family(self.session, family_id, now)
