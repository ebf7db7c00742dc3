"""`Settings`: every setting defined once — environment name (`OAUTH2_` + field name in
capitals), type, default, README line (`description`) and secret flag — as a frozen
pydantic-settings model.

`Settings.from_env()` reads them and reports every unknown or invalid variable and every
failed cross-field check (production's refusals included) in one `ConfigError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Annotated, Any, Self

from pydantic import BeforeValidator, ValidationError, create_model, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from oauth2_server.config.checks import cross_field_problems
from oauth2_server.config.datadir import default_data_dir
from oauth2_server.config.errors import ConfigError, shown
from oauth2_server.config.upstream import PROVIDERS, upstream_fields
from oauth2_server.config.values import (
    Environment,
    Flag,
    GraceSeconds,
    LogFormat,
    LogLevel,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ScopeDescriptions,
    SecretDatabaseUrl,
    SecretText,
    bounded,
    is_secret,
    parse_float,
    parse_int,
)

log = logging.getLogger("oauth2_server.config")

ENV_PREFIX = "OAUTH2_"

# Settings that earlier versions read and this one ignores: accepted with a warning, so an
# upgrade does not refuse to start over a variable that has lost its meaning.
RETIRED = {
    "OAUTH2_SECRET_CACHE_TTL": "client secrets are stored as SHA-256 and need no cache",
}


def _in_range(parse: Any, low: float, high: float) -> BeforeValidator:
    """A validator of text parsed by `parse` and accepted from `low` to `high`."""
    check = bounded(parse, lambda v: low <= v <= high, f"expected {low:g} to {high:g}")
    return BeforeValidator(lambda raw: check(raw) if isinstance(raw, str) else raw)


PushedRequestTtl = Annotated[int, _in_range(parse_int, 1, 60)]
DPoPWindow = Annotated[int, _in_range(parse_int, 5, 300)]
AssertionMaxAge = Annotated[int, _in_range(parse_int, 10, 3600)]
JwksCacheTtl = Annotated[int, _in_range(parse_int, 0, 86400)]

# The proactive refresh worker's bounds (issue #14 item 1).
RefreshAhead = Annotated[int, _in_range(parse_int, 60, 86400)]
RefreshInterval = Annotated[float, _in_range(parse_float, 1, 3600)]
RefreshConcurrency = Annotated[int, _in_range(parse_int, 1, 64)]
RefreshBackoffMax = Annotated[int, _in_range(parse_int, 1, 86400)]


def env_name(attr: str) -> str:
    """The environment variable of the field `attr`: `port` → `OAUTH2_PORT`."""
    return ENV_PREFIX + attr.upper()


class _EnvironSource(EnvSettingsSource):
    """pydantic-settings' environment source reading `environ` instead of `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Field names are lower case and matching is case-insensitive, so only exact
        # `OAUTH2_` names are passed on (from_env refuses other spellings as unknown).
        return {k.lower(): v for k, v in self._environ.items() if k.startswith(ENV_PREFIX)}


class _Settings(BaseSettings):
    """Validated, immutable configuration. Build with `Settings.from_env()`.

    Times are seconds; the README configuration table is generated from these fields,
    followed by the upstream providers' (`upstream.py`)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,  # each field's docstring is its README line
    )

    env: Environment = "development"
    """`production` refuses to start without configured encryption keys, an https issuer and a
    non-SQLite database; it also marks cookies `Secure`."""
    issuer: str = "http://127.0.0.1:8000"
    """Issuer identifier (RFC 8414 §2): base URL of every endpoint and the `iss` claim."""
    host: str = "127.0.0.1"
    """Address `serve` listens on."""
    port: PositiveInt = 8000
    """Port `serve` listens on."""
    workers: PositiveInt = 1
    """uvicorn worker processes."""
    forwarded_allow_ips: str = ""
    """Reverse proxies (IPs or CIDR networks, comma separated) whose X-Forwarded-For and
    X-Forwarded-Proto are trusted for the client IP; empty: trust nobody."""
    limit_concurrency: PositiveInt = 1000
    """Connections and tasks a worker serves at once; beyond it new requests get 503."""
    keep_alive_timeout: PositiveInt = 5
    """Seconds an idle keep-alive connection stays open."""
    max_header_bytes: PositiveInt = 16384
    """Largest request line plus headers a worker buffers; larger is refused (400/431)."""
    access_log: Flag = True
    """One access line per request (request id, route template, status, latency, client_id, client
    IP; never a query string)."""
    loop_monitor_interval: NonNegativeFloat = 0.01
    """Seconds between a worker's event-loop lag ticks (`oauth2_event_loop_lag_seconds`, which also
    record GC pauses); 0 turns both off. 0.001 resolves 1 ms stalls, at about 6 % of a core per
    idle worker."""
    data_dir: str = ""
    """Directory (created 0700) of the embedded default's state: the SQLite file and the development
    keyring. Empty: the per-user data directory (`$XDG_DATA_HOME/oauth2-server`, else
    `~/.local/share/oauth2-server`)."""
    database_url: SecretDatabaseUrl = ""
    """SQLAlchemy URL; `postgresql://…` is used through asyncpg. Empty: the SQLite file
    `oauth2_server.db` in OAUTH2_DATA_DIR. SQLite migrates itself."""
    db_pool_size: PositiveInt = 10
    """N, a worker's connection budget for requests (PostgreSQL): half (at least 1) for the
    asyncpg hot path, the rest (at least 1) for SQLAlchemy, no overflow, plus one LISTEN
    connection for client changes; size `max_connections` for workers × instances × (N + 1)."""
    db_timeout: PositiveFloat = 5.0
    """Seconds to connect, to wait for a pooled connection and for each statement (PostgreSQL); past
    it a request answers 503 `temporarily_unavailable`."""
    encryption_keys: SecretText = ""
    """Keyring for AES-256-GCM at rest: `kid:base64url-32-bytes[,kid:…]`. Empty in development: a
    key is generated into OAUTH2_DEV_KEY_FILE with a warning."""
    encryption_primary_key: str = ""
    """Key id that encrypts new data (default: the first key of the keyring)."""
    dev_key_file: str = ""
    """Where development generates its keyring (never used in production). Empty:
    `oauth2_server.dev-keys.json` in OAUTH2_DATA_DIR."""
    access_token_ttl: PositiveInt = 3600
    """Access token lifetime, seconds."""
    refresh_token_ttl: PositiveInt = 2592000
    """Refresh token lifetime, seconds (30 days); each rotation starts a new one."""
    refresh_family_max_age: NonNegativeInt = 7776000
    """Absolute lifetime of a refresh token family, seconds (90 days) from the authorization code
    exchange: rotation never extends a refresh token past it, so the user signs in again (RFC 9700
    §4.14.2). 0: no absolute limit."""
    refresh_reuse_grace: GraceSeconds = 0.0
    """Seconds (0–300) after a refresh token's rotation during which the same client may use it
    again and get a fresh pair that supersedes the current one, instead of revoking the family (a
    retry after a lost answer). 0: every reuse revokes."""
    authorization_code_ttl: PositiveInt = 60
    """Authorization code lifetime, seconds; at most 60."""
    pushed_request_ttl: PushedRequestTtl = 60
    """Seconds a pushed authorization request's `request_uri` can be used (RFC 9126 §2.2), 1–60."""
    dpop_proof_window: DPoPWindow = 60
    """Seconds a DPoP proof's `iat` may be from the server's clock, either way (RFC 9449 §11.1),
    5–300; its `jti` is remembered across the deployment for twice as long."""
    dpop_nonce: Flag = False
    """Require a server-provided nonce in DPoP proofs (RFC 9449 §8): a proof without a current one
    is answered `use_dpop_nonce` with a fresh `DPoP-Nonce` header."""
    client_assertion_max_age: AssertionMaxAge = 300
    """Seconds ahead of now a `private_key_jwt` client assertion's `exp` may be (RFC 7523 §3),
    10–3600; its `jti` is remembered across the deployment until `exp`."""
    client_jwks_cache_ttl: JwksCacheTtl = 300
    """Seconds a worker reuses a client's JWK Set fetched from its `jwks_uri` (0–86400); an
    assertion naming an unknown `kid` fetches it again at most once a minute."""
    require_pushed_authorization_requests: Flag = False
    """Accept authorization requests only through `/oauth2/par` (RFC 9126 §5), for every client:
    `/oauth2/authorize` without a `request_uri` is refused."""
    access_token_audience: str = ""
    """`aud` of access tokens (RFC 9068 §2.2); empty means the issuer."""
    session_ttl: PositiveInt = 3600
    """Login session cookie lifetime, seconds."""
    # The default is the variable's text (empty: the built-ins), parsed like any value.
    scope_descriptions: ScopeDescriptions = ""  # type: ignore[assignment]
    """What the consent page says for each scope: a JSON object such as `{"read": "Read your
    orders"}`, added to built-in texts for `admin`, `introspect`, `profile`, `read`, `write`,
    `reviews:read`, `upstream:google`, `upstream:microsoft`. Other scopes show their name."""
    client_cache_ttl: PositiveFloat = 5.0
    """Seconds a worker reuses a cached client record before reading it again. Not a staleness
    bound: a client change reaches every worker at once (README, "Client changes take effect at
    once")."""
    argon2_concurrency: PositiveInt = 2
    """argon2 verifications (passwords, legacy client secrets) run at once per worker, off the event
    loop."""
    argon2_queue: NonNegativeInt = 32
    """argon2 verifications that may wait for a slot per worker; beyond them the request is answered
    503 with Retry-After at once."""
    client_auth_failure_limit: PositiveInt = 10
    """Attempts per key and window: failed client authentications per client id and per IP (more are
    429; a correct secret always passes); login attempts per IP, per (username, IP), per username
    without a trusted-device cookie, per device cookie."""
    client_auth_failure_window: PositiveFloat = 60.0
    """The failure window, seconds (it starts at a key's first counted attempt)."""
    limiter_max_keys: PositiveInt = 10000
    """Failure-limiter keys a worker holds in memory (SQLite counters, keys known to be over the
    limit, open refusal summaries), each as a 64-character digest."""
    device_cookie_ttl: PositiveInt = 15552000
    """Lifetime, seconds (180 days), of the signed trusted-device cookie a browser gets at sign-in;
    with it, failed logins elsewhere never throttle that user in that browser."""
    max_body_bytes: PositiveInt = 16384
    """Largest request body accepted on OAuth endpoints; larger is 413."""
    audit_flush_interval: PositiveFloat = 1.0
    """Seconds between batch writes of read-only audit rows (introspection, failed client
    authentication): what a crash can lose."""
    audit_batch_size: PositiveInt = 500
    """Buffered read-only audit rows that force an early flush."""
    audit_buffer_max_rows: PositiveInt = 100000
    """Most read-only audit rows a worker holds while writes fail; past it the oldest are dropped
    and counted (/readyz, /metrics)."""
    audit_retention_days: PositiveInt = 90
    """Days audit rows are kept; the janitor then removes them (on PostgreSQL a whole month
    partition once all of it is older, so up to a month longer)."""
    audit_seal_delay: NonNegativeFloat = 60.0
    """Seconds an audit row waits before the janitor seals it into the hash chain; must exceed the
    longest time between a row's timestamp and its commit."""
    audit_seal_margin: NonNegativeFloat = 15.0
    """Seconds the sealer keeps clear of rows that may still commit: it seals only rows older than
    this (and, on PostgreSQL, than the oldest open transaction minus this); must exceed clock skew
    between servers and the database, and on SQLite the longest wait for its write lock."""
    audit_checkpoint_sink: str = ""
    """Write-once copy of each signed checkpoint and retention record: a file path (one JSON line
    appended each) or an http(s) URL (POSTed as JSON); empty: none. A failure is logged and counted,
    never blocks sealing."""
    janitor_batch_size: PositiveInt = 1000
    """Rows the janitor deletes or seals per transaction (short locks)."""
    bootstrap_admin: Flag = True
    """On an empty database, `serve` creates an admin client and prints its secret once."""
    admin_require_person: Flag = False
    """Refuse (403 `person_required`) admin API tokens of clients registered to no person
    (`clients create --person`), the bootstrap admin client among them. The command line is not
    affected."""
    log_level: LogLevel = "info"
    """Log level."""
    log_format: LogFormat = "auto"
    """`serve`'s log lines: `text` (human-readable) or `json` (one object per line); `auto`: json
    when OAUTH2_ENV=production, else text."""
    # -- upstream brokering (RFC 8693 token exchange for branches' Google tokens) -------
    upstream_min_ttl: PositiveInt = 300
    """Seconds of life a token returned by token exchange has at least; a stored upstream token with
    less is refreshed at the provider first. A provider whose tokens live shorter: half their
    lifetime (README "Upstream provider faults")."""
    upstream_timeout: PositiveFloat = 10.0
    """Deadline in seconds of an upstream provider call (code exchange, revocation, userinfo: the
    whole call, body included) and of a token exchange's wait for a refresh; past it token
    exchange answers `temporarily_unavailable` (503) while the refresh goes on."""
    upstream_refresh_cap: PositiveFloat = 30.0
    """Seconds a refresh at the provider may take in all (body included). It goes on after its
    caller's deadline (OAUTH2_UPSTREAM_TIMEOUT), so that a late answer, and a rotated refresh
    token in it, is still stored; at least OAUTH2_UPSTREAM_TIMEOUT."""
    upstream_state_ttl: PositiveInt = 600
    """Seconds a `branches connect` authorization URL (its single-use `state`) stays valid."""
    upstream_refresh_worker: Flag = False
    """`serve` also runs the proactive refresh worker (each worker process; safe with many, as is
    a separate `oauth2-server worker`, which docker-compose.yml runs instead)."""
    upstream_refresh_ahead: RefreshAhead = 600
    """Seconds before expiry the refresh worker refreshes an upstream access token (60-86400; at
    least OAUTH2_UPSTREAM_MIN_TTL to spare exchanges a refresh; shorter-lived tokens: half their
    lifetime)."""
    upstream_refresh_interval: RefreshInterval = 30.0
    """Seconds between the refresh worker's cycles (±20 % jitter; 1-3600); also the base of a
    failing grant's backoff."""
    upstream_refresh_concurrency: RefreshConcurrency = 4
    """Refreshes one refresh worker runs at the provider at once (1-64)."""
    upstream_refresh_backoff_max: RefreshBackoffMax = 3600
    """Longest wait in seconds (±20 % jitter) before the refresh worker retries a grant whose
    refreshes keep failing (the wait doubles per failure from OAUTH2_UPSTREAM_REFRESH_INTERVAL)."""
    upstream_failing_threshold: PositiveInt = 3
    """Failed refreshes in a row after which an `upstream.refresh_failing` event is sent (the
    grant's health is `refresh_failing` from the first)."""
    # -- webhooks (issue 14 item 3; README "Webhooks") -----------------------------------
    webhook_url: str = ""
    """Where webhook events are POSTed, signed per Standard Webhooks; https when
    OAUTH2_ENV=production. Empty: events wait in the outbox until one is set."""
    webhook_secret: SecretText = ""
    """Signing secret of the webhooks, `whsec_<base64 of 24-64 random bytes>` (required with
    OAUTH2_WEBHOOK_URL; `oauth2-server webhooks generate-secret` makes one)."""
    webhook_timeout: PositiveFloat = 10.0
    """Seconds one delivery may take in all (connect, send, answer); past it the attempt fails
    and is retried."""
    webhook_poll_interval: PositiveFloat = 2.0
    """Seconds between the delivery loop's looks at the outbox when it is idle."""
    webhook_backoff_max: PositiveFloat = 3600.0
    """Longest wait in seconds before retrying an event (the wait doubles from 5 s per failed
    attempt, ±20 % jitter); retries never stop, and later events of the same subject wait."""
    webhook_retention_days: PositiveInt = 7
    """Days a delivered event stays in the outbox before the delivery loop deletes it."""

    @model_validator(mode="after")
    def _derive_paths(self) -> Self:
        # The embedded default keeps its state in one place (README "Data directory"):
        # empty OAUTH2_DATA_DIR, OAUTH2_DATABASE_URL and OAUTH2_DEV_KEY_FILE derive from it.
        # The model is frozen: this validator is the only writer, before anyone reads it.
        data_dir = os.path.abspath(os.path.expanduser(self.data_dir or default_data_dir()))
        derived = {"data_dir": data_dir}
        if not self.database_url:
            path = os.path.join(data_dir, "oauth2_server.db")
            derived["database_url"] = f"sqlite+aiosqlite:///{path}"
        if not self.dev_key_file:
            derived["dev_key_file"] = os.path.join(data_dir, "oauth2_server.dev-keys.json")
        self.__dict__.update(derived)
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Read every `OAUTH2_*` variable of `environ` (default `os.environ`) at once.

        Retired variables are logged once and ignored. Raises ConfigError listing every
        unknown or invalid variable, else every failed cross-field check (production
        refusals included), in one message."""
        environ = os.environ if environ is None else environ
        for name in sorted(RETIRED.keys() & environ.keys()):
            log.warning("%s is no longer used and is ignored: %s", name, RETIRED[name])
        known = {env_name(attr) for attr in cls.model_fields}
        problems = [
            f"unknown setting {k[:80]} (see README's configuration table)"
            for k in sorted(environ)
            if k.startswith(ENV_PREFIX) and k not in known and k not in RETIRED
        ]
        try:
            # Only `environ`: never os.environ, dotenv files or secrets directories.
            settings = cls(_build_sources=((_EnvironSource(cls, environ),), {}))
        except ValidationError as exc:
            problems.extend(_invalid(cls, exc, environ))
        if problems:
            raise ConfigError(*problems)
        settings.validate()
        return settings

    def problems(self) -> list[str]:
        """Every cross-field problem of this configuration (empty when it is valid)."""
        return cross_field_problems(self)

    def validate(self) -> None:  # type: ignore[override]  # pydantic's is deprecated
        """Cross-field checks; raise ConfigError naming every variable at fault at once."""
        found = self.problems()
        if found:
            raise ConfigError(*found)

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def effective_log_format(self) -> str:
        """`text` or `json`: OAUTH2_LOG_FORMAT, with `auto` resolved by OAUTH2_ENV."""
        if self.log_format == "auto":
            return "json" if self.production else "text"
        return self.log_format

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def issuer_url(self) -> str:
        """The issuer without a trailing slash, for joining endpoint paths."""
        return self.issuer.rstrip("/")

    @property
    def audience(self) -> str:
        return self.access_token_audience or self.issuer_url


def _invalid(
    cls: type[BaseSettings], error: ValidationError, environ: Mapping[str, str]
) -> list[str]:
    """`NAME='value' is invalid: <reason>` for each field error, in field order."""
    found = []
    for item in error.errors():
        attr = str(item["loc"][0]) if item["loc"] else ""
        reason = item.get("ctx", {}).get("error") or item["msg"]
        if attr not in cls.model_fields:
            found.append(f"invalid configuration: {reason}")
            continue
        env = env_name(attr)
        raw = environ.get(env, "")
        found.append(
            f"{shown(env, raw, secret=is_secret(cls.model_fields[attr]))} is invalid: {reason}"
        )
    return found


# The configuration: the settings above, then each upstream provider's seven settings.
Settings = create_model(
    "Settings", __base__=_Settings, __module__=__name__, **upstream_fields(*PROVIDERS)
)
