"""ORM models: every table of the contract (DESIGN.md "Storage"), names starting `oauth2_`.

Times are UTC `datetime`s (`UTCDateTime` returns them timezone-aware on SQLite too).
No column holds a secret or a token in clear: codes and refresh tokens are SHA-256 hex
digests, client secrets `sha256$` digests (older ones argon2id until their next use),
passwords argon2id hashes, private keys AES-256-GCM ciphertext.

Longer than the 400-line guideline on purpose: the whole schema is one module, so one
read shows every table, and Alembic's `env.py` and the storage layer import one metadata.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend (SQLite drops the zone on its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# BigInteger autoincrement primary keys need INTEGER on SQLite to be rowid aliases.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Client(Base):
    """A registered OAuth client (RFC 6749 §2). `secret_hash` is `sha256$<hex>`
    (argon2id for secrets set before migration 0005, until their next use); null for public.

    `version` goes up by one with every change of the row (`storage.clients`), so a
    worker's cached copy can be checked against it in the statement that uses it.

    `person`: the named person an admin client is registered to, named in every audit
    row its tokens write (issue #11 item 2); `bootstrap`: the admin client the first
    start created (migration 0010)."""

    __tablename__ = "oauth2_clients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    token_endpoint_auth_method: Mapped[str] = mapped_column(String(40))
    grant_types: Mapped[list[str]] = mapped_column(JSON)
    redirect_uris: Mapped[list[str]] = mapped_column(JSON)
    scope: Mapped[str] = mapped_column(Text, default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    version: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    person: Mapped[str | None] = mapped_column(String(200), nullable=True)
    bootstrap: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # issue #15: RFC 9126 §6 and RFC 9449 §5.2 client metadata (migration 0016)
    require_pushed_authorization_requests: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    dpop_bound_access_tokens: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    # issue #15: a private_key_jwt client's public keys (RFC 7523 §2.2; migration 0017)
    jwks: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    jwks_uri: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    # RFC 8707 §2: the resources (absolute URIs) the client may name (migration 0018)
    resources: Mapped[list[str]] = mapped_column(JSON, default=list, server_default=text("'[]'"))


class User(Base):
    """A resource owner who signs in on the login page. `subject` is the JWT `sub`."""

    __tablename__ = "oauth2_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String(64), unique=True)
    username: Mapped[str] = mapped_column(String(200), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]


class Consent(Base):
    """Scopes a user has approved for a client; the consent page is skipped when covered."""

    __tablename__ = "oauth2_consents"
    __table_args__ = (UniqueConstraint("user_id", "client_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("oauth2_users.id", ondelete="CASCADE"))
    client_id: Mapped[str] = mapped_column(
        ForeignKey("oauth2_clients.client_id", ondelete="CASCADE")
    )
    scope: Mapped[str] = mapped_column(Text, default="")
    granted_at: Mapped[datetime]


class AuthorizationCode(Base):
    """RFC 6749 §4.1.2 code, stored as SHA-256 of the code with its PKCE challenge.

    `consumed_at` is set once by an atomic compare-and-set; a consumed row is kept until
    it expires so a replay can be detected and its `family_id`'s tokens revoked.
    """

    __tablename__ = "oauth2_authorization_codes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(ForeignKey("oauth2_users.id", ondelete="CASCADE"))
    redirect_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    scope: Mapped[str] = mapped_column(Text, default="")
    code_challenge: Mapped[str] = mapped_column(String(128))
    code_challenge_method: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    consumed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    family_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # RFC 8707 §2.2: the resources granted at authorization (migration 0018); null: none
    resources: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class AccessToken(Base):
    """One issued JWT access token (RFC 9068), keyed by its `jti`; never the JWT itself."""

    __tablename__ = "oauth2_access_tokens"
    __table_args__ = (
        Index("ix_oauth2_access_tokens_client_id", "client_id"),
        Index("ix_oauth2_access_tokens_family_id", "family_id"),
        Index("ix_oauth2_access_tokens_expires_at", "expires_at"),
    )

    jti: Mapped[str] = mapped_column(String(36), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200))
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    scope: Mapped[str] = mapped_column(Text, default="")
    grant_type: Mapped[str] = mapped_column(String(100))
    family_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class RefreshToken(Base):
    """An opaque refresh token as SHA-256 hex, in a family (one grant) with its parent.

    RFC 9700 §4.14.2: `rotated_at` is set by compare-and-set on use; a rotated token used
    again revokes the whole family.
    """

    __tablename__ = "oauth2_refresh_tokens"
    __table_args__ = (
        Index("ix_oauth2_refresh_tokens_family_id", "family_id"),
        Index("ix_oauth2_refresh_tokens_client_id", "client_id"),
        Index("ix_oauth2_refresh_tokens_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    family_id: Mapped[str] = mapped_column(String(36))
    parent_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    client_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(Integer, index=True)
    scope: Mapped[str] = mapped_column(Text, default="")
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    rotated_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # The family's absolute end (OAUTH2_REFRESH_FAMILY_MAX_AGE after the code exchange),
    # copied to every rotated token; `expires_at` never passes it. NULL: no limit.
    family_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # RFC 9449 §5: the thumbprint of the DPoP key a public client's refresh token is bound
    # to (migration 0016); null: not bound.
    dpop_jkt: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # RFC 8707 §2.2: the resources granted to the family (migration 0018); null: none
    resources: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class TokenLog(Base):
    """The audit trail (`oauth2_token_logs`): one row per token event, never a token.

    On PostgreSQL the table is partitioned by month on `created_at`, so the primary key
    is (`id`, `created_at`); SQLite keeps `id` alone as its rowid key. `seal_seq`,
    `prev_hash` and `row_hash` are null until `audit.sealing.seal_pending` links the row
    into the hash chain, outside the request.
    """

    __tablename__ = "oauth2_token_logs"
    __table_args__ = (
        Index("ix_oauth2_token_logs_created_id", "created_at", "id"),
        Index("ix_oauth2_token_logs_client_created", "client_id", "created_at", "id"),
        Index("ix_oauth2_token_logs_action_created", "action", "created_at", "id"),
        Index("ix_oauth2_token_logs_subject_created", "subject", "created_at", "id"),
        Index("ix_oauth2_token_logs_branch_created", "branch_id", "created_at", "id"),
        Index("ix_oauth2_token_logs_ip_created", "ip", "created_at", "id"),
        Index(
            "ix_oauth2_token_logs_family",
            "family_id",
            postgresql_where=text("family_id IS NOT NULL"),
            sqlite_where=text("family_id IS NOT NULL"),
        ),
        Index(
            "ix_oauth2_token_logs_risky",
            "created_at",
            "id",
            postgresql_where=text("risk_score > 0"),
            sqlite_where=text("risk_score > 0"),
        ),
        # chain order (verify walks it) and rows waiting to be sealed (issue #11 item 5)
        Index(
            "ix_oauth2_token_logs_seal_seq",
            "seal_seq",
            postgresql_where=text("seal_seq IS NOT NULL"),
            sqlite_where=text("seal_seq IS NOT NULL"),
        ),
        Index(
            "ix_oauth2_token_logs_unsealed",
            "created_at",
            "id",
            postgresql_where=text("seal_seq IS NULL"),
            sqlite_where=text("seal_seq IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(primary_key=True)
    action: Mapped[str] = mapped_column(String(40))
    client_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    subject: Mapped[str | None] = mapped_column(String(200), nullable=True)
    branch_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    grant_type: Mapped[str | None] = mapped_column(String(100), nullable=True)
    token_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(String(400), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    risk_score: Mapped[float] = mapped_column(Numeric(3, 2), default=0)
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    family_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    seal_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    row_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AuditChain(Base):
    """The one row (`id` 1) describing the audit hash chain.

    `head_*`: the last sealed row (its `seal_seq`, `row_hash`, position `created_at`,
    `id`). `anchor_*`: where verification starts, i.e. the last row removed by retention
    (seq 0 and 64 zeros before anything was removed).
    """

    __tablename__ = "oauth2_audit_chain"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    head_seq: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    head_created_at: Mapped[datetime | None] = mapped_column(nullable=True)
    head_log_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    anchor_seq: Mapped[int] = mapped_column(BigInteger)
    anchor_hash: Mapped[str] = mapped_column(String(64))
    anchor_created_at: Mapped[datetime | None] = mapped_column(nullable=True)
    anchor_log_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    updated_at: Mapped[datetime]
    # issue #11 item 5: every row created at or before `sealed_through` is sealed (an
    # unsealed one is a straggler for `audit repair`); `baseline_*`: the anchor when
    # signed retention records began (migration 0009), where their chain starts.
    sealed_through: Mapped[datetime | None] = mapped_column(nullable=True)
    baseline_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    baseline_hash: Mapped[str] = mapped_column(String(64), default="0" * 64)


class AuditCheckpoint(Base):
    """A signed checkpoint of the audit chain, one per seal transaction (issue #11 item 5):
    `seq` and `row_hash` of the head it sealed, `kid` of the signing key and `statement`,
    the compact JWS (`audit.checkpoints` documents the payload)."""

    __tablename__ = "oauth2_audit_checkpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    row_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    kid: Mapped[str] = mapped_column(String(64))
    statement: Mapped[str] = mapped_column(Text)


class AuditRetention(Base):
    """A signed retention record (issue #11 item 5): sealed rows `first_seq`–`last_seq`
    (`rows` of them, created `from_at`–`to_at`, UTC) removed under a policy of
    `policy_days` by `actor`; `last_hash` is the last removed row's `row_hash`, the
    chain's anchor afterwards. `statement` is the compact JWS (`audit.retention`)."""

    __tablename__ = "oauth2_audit_retention"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    first_seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(BigInteger)
    from_at: Mapped[datetime]
    to_at: Mapped[datetime]
    last_hash: Mapped[str] = mapped_column(String(64))
    policy_days: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    kid: Mapped[str] = mapped_column(String(64))
    statement: Mapped[str] = mapped_column(Text)


class SigningKey(Base):
    """An ES256 signing key; the private half is AES-256-GCM ciphertext under the keyring.

    `status`: `current` signs; `previous` is still published in JWKS after a rotation;
    `retired` is neither.
    """

    __tablename__ = "oauth2_signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(10))
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    private_key_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    encryption_key_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]


# -- upstream brokering (issue 3; DESIGN.md "Upstream brokering") -------------------------


class Branch(Base):
    """A location of the business. `branch_id` is the external id that token exchange
    requests, audit rows and the CLI name; the Google ids locate it in Business Profile."""

    __tablename__ = "oauth2_branches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    branch_id: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    contact_email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    google_account_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    google_location_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ClientBranchGrant(Base):
    """A client may broker upstream tokens for this branch (`branch_id`), or for every
    branch when `branch_id` is `*` (so no foreign key on it)."""

    __tablename__ = "oauth2_client_branches"
    __table_args__ = (
        UniqueConstraint("client_id", "branch_id"),
        Index("ix_oauth2_client_branches_branch_id", "branch_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("oauth2_clients.client_id", ondelete="CASCADE")
    )
    branch_id: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime]


class UpstreamCredential(Base):
    """One upstream grant per (provider, account `sub`), shared by the branches linked to it.

    Access and refresh tokens are AES-256-GCM ciphertexts under the keyring key
    `encryption_key_id`; their associated data binds each to this row's id, provider,
    account and token kind (`upstream.sealing`). `needs_consent` is set when the provider
    refused a refresh (`invalid_grant`) or narrowed its scope: an admin must connect a
    branch again.

    `refresh_started_at`/`refresh_lease_until` mark a refresh in flight at the provider
    (committed before the call, cleared with its outcome; a dead refresher's mark is
    taken over after the lease). `access_issued_at` dates the stored access token (its
    lifetime is `access_expires_at - access_issued_at`). `last_refresh_error` (never a
    token), `last_refresh_error_at` and `refresh_failures` (consecutive) describe the
    last failed refreshes; `refresh_failing_since` dates the first of them and
    `last_refresh_error_class` names the last one's kind (`upstream.health`: the grant's
    health). `next_refresh_at` is when the refresh worker may retry a failing grant
    (backoff; NULL: due by expiry, found through the `access_expires_at` index).
    """

    __tablename__ = "oauth2_upstream_credentials"
    __table_args__ = (
        UniqueConstraint("provider", "account_sub"),
        Index("ix_oauth2_upstream_credentials_access_expires_at", "access_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    provider: Mapped[str] = mapped_column(String(40))
    account_sub: Mapped[str] = mapped_column(String(255))
    account_email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    scope: Mapped[str] = mapped_column(Text, default="")
    encryption_key_id: Mapped[str] = mapped_column(String(64))
    access_token_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    refresh_token_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    access_expires_at: Mapped[datetime]
    needs_consent: Mapped[bool] = mapped_column(Boolean, default=False)
    consent_error: Mapped[str | None] = mapped_column(String(400), nullable=True)
    last_refreshed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    refresh_started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    refresh_lease_until: Mapped[datetime | None] = mapped_column(nullable=True)
    access_issued_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_refresh_error: Mapped[str | None] = mapped_column(String(400), nullable=True)
    last_refresh_error_at: Mapped[datetime | None] = mapped_column(nullable=True)
    refresh_failures: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    refresh_failing_since: Mapped[datetime | None] = mapped_column(nullable=True)
    last_refresh_error_class: Mapped[str | None] = mapped_column(String(40), nullable=True)
    next_refresh_at: Mapped[datetime | None] = mapped_column(nullable=True)


class BranchUpstreamLink(Base):
    """Which upstream grant a branch uses for a provider (at most one per provider)."""

    __tablename__ = "oauth2_branch_upstream_links"
    __table_args__ = (Index("ix_oauth2_branch_upstream_links_credential_id", "credential_id"),)

    branch_id: Mapped[str] = mapped_column(
        String(100),
        ForeignKey("oauth2_branches.branch_id", ondelete="CASCADE"),
        primary_key=True,
    )
    provider: Mapped[str] = mapped_column(String(40), primary_key=True)
    credential_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("oauth2_upstream_credentials.id", ondelete="CASCADE")
    )
    linked_at: Mapped[datetime]


class UpstreamAuthorizationState(Base):
    """A pending connection: the `state` sent to the provider, stored as its SHA-256, with
    the PKCE verifier as keyring ciphertext. Consumed once by the callback."""

    __tablename__ = "oauth2_upstream_states"

    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider: Mapped[str] = mapped_column(String(40))
    branch_id: Mapped[str] = mapped_column(
        String(100), ForeignKey("oauth2_branches.branch_id", ondelete="CASCADE")
    )
    redirect_uri: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(Text)
    encryption_key_id: Mapped[str] = mapped_column(String(64))
    code_verifier_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class AuthFailure(Base):
    """One failure-limiter counter, shared by every worker and instance (PostgreSQL):
    `count` attempts of one key since `window_start` (UTC). The key (client id, IP,
    username, …) is stored only as `key_hash`, an HMAC-SHA256 hex digest."""

    __tablename__ = "oauth2_auth_failures"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(index=True)
    count: Mapped[int] = mapped_column(Integer)


# -- notifications (issue 14 item 3) -------------------------------------------------------


class WebhookOutbox(Base):
    """One webhook event (Standard Webhooks), written in the transaction of the change it
    reports (`storage.outbox.enqueue_event`) and delivered later, at least once.

    `seq` orders events; `event_id` (`msg_<32 hex>`) is the `webhook-id` a receiver
    deduplicates by. Events of one `subject` are delivered in `seq` order: an undelivered
    earlier one blocks the later ones. `lease_until` marks an event being sent by one
    delivery loop (others skip it until then); `attempts`, `next_attempt_at` (UTC) and
    `last_error` (an error class or HTTP status, never a body or secret) record retries;
    `delivered_at` is set only after the receiver answered 2xx.
    """

    __tablename__ = "oauth2_webhook_outbox"
    __table_args__ = (
        Index(
            "ix_oauth2_webhook_outbox_pending_subject",
            "subject",
            "seq",
            postgresql_where=text("delivered_at IS NULL"),
            sqlite_where=text("delivered_at IS NULL"),
        ),
        Index(
            "ix_oauth2_webhook_outbox_pending_due",
            "next_attempt_at",
            "seq",
            postgresql_where=text("delivered_at IS NULL"),
            sqlite_where=text("delivered_at IS NULL"),
        ),
        Index(
            "ix_oauth2_webhook_outbox_delivered",
            "delivered_at",
            postgresql_where=text("delivered_at IS NOT NULL"),
            sqlite_where=text("delivered_at IS NOT NULL"),
        ),
    )

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(40), unique=True)
    event_type: Mapped[str] = mapped_column(String(60))
    subject: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None] = mapped_column(nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(200), nullable=True)


class StatsHourly(Base):
    """Audit rows of one `action` created in the UTC hour starting at `hour`, for every
    client (`client_id` empty) or, for `client_auth_failed`, per registered client (`?`:
    no registered client): the rollup behind the statistics (issue #14 item 4;
    `storage.stats`). Written once per hour, zeros included, when the hour has settled
    (ended more than `storage.stats.SETTLE` seconds ago); never changed afterwards."""

    __tablename__ = "oauth2_stats_hourly"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    action: Mapped[str] = mapped_column(String(40), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class PushedRequest(Base):
    """A pushed authorization request (RFC 9126 §2), named by the SHA-256 hex of its
    `request_uri`: the client that pushed it, its validated parameters (name → values) and
    its end (UTC, at most 60 s after the push). Taken once by `/oauth2/authorize`."""

    __tablename__ = "oauth2_pushed_requests"

    request_uri_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64))
    parameters: Mapped[dict[str, list[str]]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class UsedJti(Base):
    """A JWT id seen once (DPoP proofs, RFC 9449 §11.1), named by the SHA-256 hex of its
    key; kept until `expires_at` (UTC)."""

    __tablename__ = "oauth2_used_jtis"

    jti_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
