"""Settings from the environment: one name, one default, one line of documentation each.

`SETTINGS` is the single table of every setting; README's configuration table mirrors it
(`oauth2-server settings` prints it). `Settings.from_env()` reads and validates them and
raises `ConfigError` naming the variable on any unknown or invalid value.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

# Settings that earlier versions read and this one ignores: accepted with a warning, so an
# upgrade does not refuse to start over a variable that has lost its meaning.
RETIRED = {
    "OAUTH2_SECRET_CACHE_TTL": "client secrets are stored as SHA-256 and need no cache",
}


class ConfigError(ValueError):
    """A setting is missing, unknown or invalid; the message names the variable.

    `problems` lists every problem found (the message joins them on one line)."""

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        if len(problems) == 1:
            message = problems[0]
        else:
            message = f"{len(problems)} configuration problems: " + "; ".join(problems)
        super().__init__(message)


# Settings whose value is never repeated in a message (they hold a password or a key).
_SECRET_VALUES = {"OAUTH2_DATABASE_URL", "OAUTH2_ENCRYPTION_KEYS"}


def _shown(env: str, raw: str) -> str:
    """`NAME='value'` for a message: at most 60 characters of the value, none of a secret."""
    if env in _SECRET_VALUES or "SECRET" in env:
        return env
    value = raw if len(raw) <= 60 else raw[:60] + "…"
    return f"{env}={value!r}"


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _int(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError("expected an integer") from None


def _float(raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ValueError("expected a number") from None


def _positive_int(raw: str) -> int:
    value = _int(raw)
    if value <= 0:
        raise ValueError("expected a positive integer")
    return value


def _non_negative_int(raw: str) -> int:
    value = _int(raw)
    if value < 0:
        raise ValueError("expected an integer ≥ 0")
    return value


def _positive_float(raw: str) -> float:
    value = _float(raw)
    if value <= 0:
        raise ValueError("expected a positive number")
    return value


def _non_negative_float(raw: str) -> float:
    value = _float(raw)
    if not value >= 0:
        raise ValueError("expected a number ≥ 0")
    return value


def _refresh_grace(raw: str) -> float:
    value = _float(raw)
    if not 0 <= value <= 300:
        raise ValueError("expected seconds from 0 to 300")
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return raw

    return parse


def _str(raw: str) -> str:
    return raw


def _database_url(raw: str) -> str:
    """A PostgreSQL or SQLite SQLAlchemy URL, or empty (the SQLite file in the data
    directory). Messages never repeat the URL (it may hold a password)."""
    if not raw:
        return raw
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        driver = make_url(raw).drivername
    except ArgumentError:
        raise ValueError(
            "not a database URL: expected postgresql://user:password@host:5432/dbname "
            "or sqlite+aiosqlite:///path/to/file.db"
        ) from None
    if driver.split("+")[0] not in {"postgresql", "postgres", "sqlite"}:
        raise ValueError(
            f"unsupported database {driver[:40]!r}: expected postgresql://… or sqlite+aiosqlite:///…"
        )
    return raw


def default_data_dir() -> str:
    """The per-user data directory: `$XDG_DATA_HOME/oauth2-server`, else
    `~/.local/share/oauth2-server` on Linux (platformdirs' `user_data_dir` elsewhere)."""
    import platformdirs

    return platformdirs.user_data_dir("oauth2-server", appauthor=False)


def ensure_data_dir(path: str) -> None:
    """Create the data directory `path` (and its parents) with mode 0700 if it is missing.

    Raises ConfigError naming OAUTH2_DATA_DIR when it cannot be created."""
    if os.path.isdir(path):
        return
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise ConfigError(
            f"OAUTH2_DATA_DIR={path[:200]!r} cannot be created ({exc.strerror}): choose a "
            "writable directory, or set OAUTH2_DATABASE_URL and OAUTH2_DEV_KEY_FILE"
        ) from None


def _url_or_empty(raw: str) -> str:
    if not raw:
        return raw
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError("expected an absolute http(s) URL, or empty")
    return raw


# What the consent page says for each scope this server itself knows (README uses them);
# OAUTH2_SCOPE_DESCRIPTIONS adds to and overrides these. A scope with no description is
# shown as its raw name (HTML-escaped).
BUILTIN_SCOPE_DESCRIPTIONS: dict[str, str] = {
    "admin": "Manage this server: clients, users, branches and tokens",
    "introspect": "Check whether tokens issued by this server are still valid",
    "upstream:google": "Use the Google accounts connected to your branches",
    "upstream:microsoft": "Use the Microsoft accounts connected to your branches",
    "profile": "See your user id",
    "read": "Read your data",
    "write": "Change your data",
    "reviews:read": "Read your reviews",
}
MAX_SCOPE_DESCRIPTIONS = 1000
MAX_SCOPE_DESCRIPTION_LENGTH = 200
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,200}")  # RFC 6749 §3.3 scope-token


def _scope_descriptions(raw: str) -> tuple[tuple[str, str], ...]:
    """A JSON object {scope: description} over BUILTIN_SCOPE_DESCRIPTIONS; empty: the
    built-ins. Scopes are RFC 6749 §3.3 scope-tokens; descriptions 1-200 printable
    characters; at most 1000 entries. Sorted (scope, description) pairs (hashable)."""
    try:
        configured: Any = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(configured, dict):
        raise ValueError('expected a JSON object such as {"read": "Read your data"}')
    if len(configured) > MAX_SCOPE_DESCRIPTIONS:
        raise ValueError(f"expected at most {MAX_SCOPE_DESCRIPTIONS} scopes")
    for scope, text in configured.items():
        if not _SCOPE_TOKEN.fullmatch(scope):
            raise ValueError(f"{scope[:50]!r} is not a scope (RFC 6749 section 3.3)")
        if (
            not isinstance(text, str)
            or not 0 < len(text) <= MAX_SCOPE_DESCRIPTION_LENGTH
            or not text.isprintable()
        ):
            raise ValueError(
                f"the description of {scope!r} must be 1-{MAX_SCOPE_DESCRIPTION_LENGTH} "
                "printable characters"
            )
    return tuple(sorted({**BUILTIN_SCOPE_DESCRIPTIONS, **configured}.items()))


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, parser, default (as text) and documentation."""

    env: str
    attr: str
    parse: Callable[[str], Any]
    default: str
    doc: str


def _upstream_provider_settings(
    name: str,
    title: str,
    *,
    authorization: str,
    token: str,
    revocation: str,
    userinfo: str,
    scopes: str,
) -> tuple[Setting, ...]:
    """The seven settings of one upstream provider (`OAUTH2_UPSTREAM_<NAME>_*`)."""
    env = f"OAUTH2_UPSTREAM_{name.upper()}_"
    attr = f"upstream_{name}_"
    return (
        Setting(
            f"{env}CLIENT_ID",
            f"{attr}client_id",
            _str,
            "",
            f"This server's OAuth client id at {title}; empty: provider not configured.",
        ),
        Setting(
            f"{env}CLIENT_SECRET",
            f"{attr}client_secret",
            _str,
            "",
            f"This server's OAuth client secret at {title}.",
        ),
        Setting(
            f"{env}AUTHORIZATION_ENDPOINT",
            f"{attr}authorization_endpoint",
            _url_or_empty,
            authorization,
            f"{title} authorization endpoint.",
        ),
        Setting(
            f"{env}TOKEN_ENDPOINT",
            f"{attr}token_endpoint",
            _url_or_empty,
            token,
            f"{title} token endpoint (code exchange and refresh).",
        ),
        Setting(
            f"{env}REVOCATION_ENDPOINT",
            f"{attr}revocation_endpoint",
            _url_or_empty,
            revocation,
            f"{title} RFC 7009 revocation endpoint; empty: none (stored "
            "tokens are still deleted on disconnect).",
        ),
        Setting(
            f"{env}USERINFO_ENDPOINT",
            f"{attr}userinfo_endpoint",
            _url_or_empty,
            userinfo,
            f"{title} OIDC userinfo endpoint (account `sub` and email when the "
            "token response has no id_token).",
        ),
        Setting(
            f"{env}SCOPES",
            f"{attr}scopes",
            _str,
            scopes,
            f"Scopes requested when connecting a branch to {title}.",
        ),
    )


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "OAUTH2_ENV",
        "env",
        _choice("development", "production"),
        "development",
        "`production` refuses to start without configured encryption keys, an https "
        "issuer and a non-SQLite database; it also marks cookies `Secure`.",
    ),
    Setting(
        "OAUTH2_ISSUER",
        "issuer",
        _str,
        "http://127.0.0.1:8000",
        "Issuer identifier (RFC 8414 §2): base URL of every endpoint and the `iss` claim.",
    ),
    Setting("OAUTH2_HOST", "host", _str, "127.0.0.1", "Address `serve` listens on."),
    Setting("OAUTH2_PORT", "port", _positive_int, "8000", "Port `serve` listens on."),
    Setting("OAUTH2_WORKERS", "workers", _positive_int, "1", "uvicorn worker processes."),
    Setting(
        "OAUTH2_FORWARDED_ALLOW_IPS",
        "forwarded_allow_ips",
        _str,
        "",
        "Reverse proxies (IPs or CIDR networks, comma separated) whose X-Forwarded-For and "
        "X-Forwarded-Proto are trusted for the client IP; empty: trust nobody.",
    ),
    Setting(
        "OAUTH2_LIMIT_CONCURRENCY",
        "limit_concurrency",
        _positive_int,
        "1000",
        "Connections and tasks a worker serves at once; beyond it new requests get 503.",
    ),
    Setting(
        "OAUTH2_KEEP_ALIVE_TIMEOUT",
        "keep_alive_timeout",
        _positive_int,
        "5",
        "Seconds an idle keep-alive connection stays open.",
    ),
    Setting(
        "OAUTH2_MAX_HEADER_BYTES",
        "max_header_bytes",
        _positive_int,
        "16384",
        "Largest request line plus headers a worker buffers; larger is refused (400/431).",
    ),
    Setting(
        "OAUTH2_ACCESS_LOG",
        "access_log",
        _bool,
        "true",
        "One access line per request (request id, route template, status, latency, "
        "client_id, client IP; never a query string).",
    ),
    Setting(
        "OAUTH2_DATA_DIR",
        "data_dir",
        _str,
        "",
        "Directory (created 0700) of the embedded default's state: the SQLite file and the "
        "development keyring. Empty: the per-user data directory "
        "(`$XDG_DATA_HOME/oauth2-server`, else `~/.local/share/oauth2-server`).",
    ),
    Setting(
        "OAUTH2_DATABASE_URL",
        "database_url",
        _database_url,
        "",
        "SQLAlchemy URL; `postgresql://…` is used through asyncpg. Empty: the SQLite file "
        "`oauth2_server.db` in OAUTH2_DATA_DIR. SQLite migrates itself.",
    ),
    Setting(
        "OAUTH2_DB_POOL_SIZE",
        "db_pool_size",
        _positive_int,
        "10",
        "N, the size of each of a worker's two PostgreSQL pools: a worker opens at most "
        "3N + 1 connections (SQLAlchemy engine N plus N overflow, asyncpg hot path N, one "
        "LISTEN connection for client changes); size `max_connections` for "
        "workers × instances × (3N + 1).",
    ),
    Setting(
        "OAUTH2_DB_TIMEOUT",
        "db_timeout",
        _positive_float,
        "5",
        "Seconds to connect, to wait for a pooled connection and for each statement "
        "(PostgreSQL); past it a request answers 503 `temporarily_unavailable`.",
    ),
    Setting(
        "OAUTH2_ENCRYPTION_KEYS",
        "encryption_keys",
        _str,
        "",
        "Keyring for AES-256-GCM at rest: `kid:base64url-32-bytes[,kid:…]`. Empty in "
        "development: a key is generated into OAUTH2_DEV_KEY_FILE with a warning.",
    ),
    Setting(
        "OAUTH2_ENCRYPTION_PRIMARY_KEY",
        "encryption_primary_key",
        _str,
        "",
        "Key id that encrypts new data (default: the first key of the keyring).",
    ),
    Setting(
        "OAUTH2_DEV_KEY_FILE",
        "dev_key_file",
        _str,
        "",
        "Where development generates its keyring (never used in production). Empty: "
        "`oauth2_server.dev-keys.json` in OAUTH2_DATA_DIR.",
    ),
    Setting(
        "OAUTH2_ACCESS_TOKEN_TTL",
        "access_token_ttl",
        _positive_int,
        "3600",
        "Access token lifetime, seconds.",
    ),
    Setting(
        "OAUTH2_REFRESH_TOKEN_TTL",
        "refresh_token_ttl",
        _positive_int,
        "2592000",
        "Refresh token lifetime, seconds (30 days); each rotation starts a new one.",
    ),
    Setting(
        "OAUTH2_REFRESH_FAMILY_MAX_AGE",
        "refresh_family_max_age",
        _non_negative_int,
        "7776000",
        "Absolute lifetime of a refresh token family, seconds (90 days) from the "
        "authorization code exchange: rotation never extends a refresh token past it, so "
        "the user signs in again (RFC 9700 §4.14.2). 0: no absolute limit.",
    ),
    Setting(
        "OAUTH2_REFRESH_REUSE_GRACE",
        "refresh_reuse_grace",
        _refresh_grace,
        "0",
        "Seconds (0–300) after a refresh token's rotation during which the same client may "
        "use it again and get a fresh pair that supersedes the current one, instead of "
        "revoking the family (a retry after a lost answer). 0: every reuse revokes.",
    ),
    Setting(
        "OAUTH2_AUTHORIZATION_CODE_TTL",
        "authorization_code_ttl",
        _positive_int,
        "60",
        "Authorization code lifetime, seconds; at most 60.",
    ),
    Setting(
        "OAUTH2_ACCESS_TOKEN_AUDIENCE",
        "access_token_audience",
        _str,
        "",
        "`aud` of access tokens (RFC 9068 §2.2); empty means the issuer.",
    ),
    Setting(
        "OAUTH2_SESSION_TTL",
        "session_ttl",
        _positive_int,
        "3600",
        "Login session cookie lifetime, seconds.",
    ),
    Setting(
        "OAUTH2_SCOPE_DESCRIPTIONS",
        "scope_descriptions",
        _scope_descriptions,
        "",
        'What the consent page says for each scope: a JSON object such as `{"read": "Read '
        'your orders"}`, added to built-in texts for `admin`, `introspect`, `profile`, '
        "`read`, `write`, `reviews:read`, `upstream:google`, `upstream:microsoft`. Other "
        "scopes show their name.",
    ),
    Setting(
        "OAUTH2_CLIENT_CACHE_TTL",
        "client_cache_ttl",
        _positive_float,
        "5",
        "Seconds a worker reuses a cached client record before reading it again. Not a "
        "staleness bound: a client change reaches every worker at once (README, "
        '"Client changes take effect at once").',
    ),
    Setting(
        "OAUTH2_ARGON2_CONCURRENCY",
        "argon2_concurrency",
        _positive_int,
        "2",
        "argon2 verifications (passwords, legacy client secrets) run at once per worker, "
        "off the event loop.",
    ),
    Setting(
        "OAUTH2_ARGON2_QUEUE",
        "argon2_queue",
        _non_negative_int,
        "32",
        "argon2 verifications that may wait for a slot per worker; beyond them the request "
        "is answered 503 with Retry-After at once.",
    ),
    Setting(
        "OAUTH2_CLIENT_AUTH_FAILURE_LIMIT",
        "client_auth_failure_limit",
        _positive_int,
        "10",
        "Attempts per key and window: failed client authentications per client id and per "
        "IP (more are 429; a correct secret always passes); login attempts per IP, per "
        "(username, IP), per username without a trusted-device cookie, per device cookie.",
    ),
    Setting(
        "OAUTH2_CLIENT_AUTH_FAILURE_WINDOW",
        "client_auth_failure_window",
        _positive_float,
        "60",
        "The failure window, seconds (it starts at a key's first counted attempt).",
    ),
    Setting(
        "OAUTH2_LIMITER_MAX_KEYS",
        "limiter_max_keys",
        _positive_int,
        "10000",
        "Failure-limiter keys a worker holds in memory (SQLite counters, keys known to be "
        "over the limit, open refusal summaries), each as a 64-character digest.",
    ),
    Setting(
        "OAUTH2_DEVICE_COOKIE_TTL",
        "device_cookie_ttl",
        _positive_int,
        "15552000",
        "Lifetime, seconds (180 days), of the signed trusted-device cookie a browser gets at "
        "sign-in; with it, failed logins elsewhere never throttle that user in that browser.",
    ),
    Setting(
        "OAUTH2_MAX_BODY_BYTES",
        "max_body_bytes",
        _positive_int,
        "16384",
        "Largest request body accepted on OAuth endpoints; larger is 413.",
    ),
    Setting(
        "OAUTH2_AUDIT_FLUSH_INTERVAL",
        "audit_flush_interval",
        _positive_float,
        "1.0",
        "Seconds between batch writes of read-only audit rows (introspection, failed "
        "client authentication): what a crash can lose.",
    ),
    Setting(
        "OAUTH2_AUDIT_BATCH_SIZE",
        "audit_batch_size",
        _positive_int,
        "500",
        "Buffered read-only audit rows that force an early flush.",
    ),
    Setting(
        "OAUTH2_AUDIT_BUFFER_MAX_ROWS",
        "audit_buffer_max_rows",
        _positive_int,
        "100000",
        "Most read-only audit rows a worker holds while writes fail; past it the oldest "
        "are dropped and counted (/readyz, /metrics).",
    ),
    Setting(
        "OAUTH2_AUDIT_RETENTION_DAYS",
        "audit_retention_days",
        _positive_int,
        "90",
        "Days audit rows are kept; the janitor then removes them (on PostgreSQL a whole "
        "month partition once all of it is older, so up to a month longer).",
    ),
    Setting(
        "OAUTH2_AUDIT_SEAL_DELAY",
        "audit_seal_delay",
        _non_negative_float,
        "60",
        "Seconds an audit row waits before the janitor seals it into the hash chain; must "
        "exceed the longest time between a row's timestamp and its commit.",
    ),
    Setting(
        "OAUTH2_JANITOR_BATCH_SIZE",
        "janitor_batch_size",
        _positive_int,
        "1000",
        "Rows the janitor deletes or seals per transaction (short locks).",
    ),
    Setting(
        "OAUTH2_BOOTSTRAP_ADMIN",
        "bootstrap_admin",
        _bool,
        "true",
        "On an empty database, `serve` creates an admin client and prints its secret once.",
    ),
    Setting(
        "OAUTH2_LOG_LEVEL",
        "log_level",
        _choice("debug", "info", "warning", "error"),
        "info",
        "Log level.",
    ),
    Setting(
        "OAUTH2_LOG_FORMAT",
        "log_format",
        _choice("auto", "text", "json"),
        "auto",
        "`serve`'s log lines: `text` (human-readable) or `json` (one object per line); "
        "`auto`: json when OAUTH2_ENV=production, else text.",
    ),
    # -- upstream brokering (RFC 8693 token exchange for branches' Google tokens) -------
    Setting(
        "OAUTH2_UPSTREAM_MIN_TTL",
        "upstream_min_ttl",
        _positive_int,
        "300",
        "Seconds of life a token returned by token exchange has at least; a stored "
        "upstream token with less is refreshed at the provider first.",
    ),
    Setting(
        "OAUTH2_UPSTREAM_TIMEOUT",
        "upstream_timeout",
        _positive_float,
        "10",
        "Seconds an upstream provider call (token, revocation, userinfo) may take; past "
        "it token exchange answers `temporarily_unavailable` (503).",
    ),
    Setting(
        "OAUTH2_UPSTREAM_STATE_TTL",
        "upstream_state_ttl",
        _positive_int,
        "600",
        "Seconds a `branches connect` authorization URL (its single-use `state`) stays valid.",
    ),
    *_upstream_provider_settings(
        "google",
        "Google",
        authorization="https://accounts.google.com/o/oauth2/v2/auth",
        token="https://oauth2.googleapis.com/token",  # noqa: S106 (a URL)
        revocation="https://oauth2.googleapis.com/revoke",
        userinfo="https://openidconnect.googleapis.com/v1/userinfo",
        scopes="openid email https://www.googleapis.com/auth/business.manage",
    ),
    *_upstream_provider_settings(
        "microsoft",
        "Microsoft identity platform v2",
        authorization="https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        token="https://login.microsoftonline.com/common/oauth2/v2.0/token",  # noqa: S106
        revocation="",
        userinfo="https://graph.microsoft.com/oidc/userinfo",
        scopes="openid email offline_access https://graph.microsoft.com/User.Read",
    ),
)


@dataclass(frozen=True)
class Settings:
    """Validated configuration. Build with `Settings.from_env()` or directly in tests."""

    env: str = "development"
    issuer: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    forwarded_allow_ips: str = ""
    limit_concurrency: int = 1000
    keep_alive_timeout: int = 5
    max_header_bytes: int = 16384
    access_log: bool = True
    data_dir: str = ""
    database_url: str = ""
    db_pool_size: int = 10
    db_timeout: float = 5.0
    encryption_keys: str = field(default="", repr=False)
    encryption_primary_key: str = ""
    dev_key_file: str = ""
    access_token_ttl: int = 3600
    refresh_token_ttl: int = 2592000
    refresh_family_max_age: int = 7776000
    refresh_reuse_grace: float = 0.0
    authorization_code_ttl: int = 60
    access_token_audience: str = ""
    session_ttl: int = 3600
    scope_descriptions: tuple[tuple[str, str], ...] = _scope_descriptions("")
    client_cache_ttl: float = 5.0
    argon2_concurrency: int = 2
    argon2_queue: int = 32
    client_auth_failure_limit: int = 10
    client_auth_failure_window: float = 60.0
    limiter_max_keys: int = 10000
    device_cookie_ttl: int = 15552000
    max_body_bytes: int = 16384
    audit_flush_interval: float = 1.0
    audit_batch_size: int = 500
    audit_buffer_max_rows: int = 100000
    audit_retention_days: int = 90
    audit_seal_delay: float = 60.0
    janitor_batch_size: int = 1000
    bootstrap_admin: bool = True
    log_level: str = "info"
    log_format: str = "auto"
    upstream_min_ttl: int = 300
    upstream_timeout: float = 10.0
    upstream_state_ttl: int = 600
    upstream_google_client_id: str = ""
    upstream_google_client_secret: str = field(default="", repr=False)
    upstream_google_authorization_endpoint: str = "https://accounts.google.com/o/oauth2/v2/auth"
    upstream_google_token_endpoint: str = "https://oauth2.googleapis.com/token"  # noqa: S105
    upstream_google_revocation_endpoint: str = "https://oauth2.googleapis.com/revoke"
    upstream_google_userinfo_endpoint: str = "https://openidconnect.googleapis.com/v1/userinfo"
    upstream_google_scopes: str = "openid email https://www.googleapis.com/auth/business.manage"
    upstream_microsoft_client_id: str = ""
    upstream_microsoft_client_secret: str = field(default="", repr=False)
    upstream_microsoft_authorization_endpoint: str = (
        "https://login.microsoftonline.com/common/oauth2/v2.0/authorize"
    )
    upstream_microsoft_token_endpoint: str = (
        "https://login.microsoftonline.com/common/oauth2/v2.0/token"  # noqa: S105
    )
    upstream_microsoft_revocation_endpoint: str = ""
    upstream_microsoft_userinfo_endpoint: str = "https://graph.microsoft.com/oidc/userinfo"
    upstream_microsoft_scopes: str = (
        "openid email offline_access https://graph.microsoft.com/User.Read"
    )
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # The embedded default keeps its state in one place (README "Data directory"):
        # empty OAUTH2_DATA_DIR, OAUTH2_DATABASE_URL and OAUTH2_DEV_KEY_FILE derive from it.
        data_dir = os.path.abspath(os.path.expanduser(self.data_dir or default_data_dir()))
        object.__setattr__(self, "data_dir", data_dir)
        if not self.database_url:
            path = os.path.join(data_dir, "oauth2_server.db")
            object.__setattr__(self, "database_url", f"sqlite+aiosqlite:///{path}")
        if not self.dev_key_file:
            path = os.path.join(data_dir, "oauth2_server.dev-keys.json")
            object.__setattr__(self, "dev_key_file", path)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every `OAUTH2_*` variable and validate them together.

        Raises ConfigError listing every unknown or invalid variable and every failed
        cross-field check (production refusals included) in one message."""
        environ = os.environ if environ is None else environ
        known = {s.env for s in SETTINGS}
        for name in sorted(RETIRED.keys() & environ.keys()):
            log.warning("%s is no longer used and is ignored: %s", name, RETIRED[name])
        problems = [
            f"unknown setting {k[:80]} (see README's configuration table)"
            for k in sorted(environ)
            if k.startswith("OAUTH2_") and k not in known and k not in RETIRED
        ]
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw = environ.get(setting.env, setting.default)
            try:
                values[setting.attr] = setting.parse(raw)
            except ValueError as exc:
                problems.append(f"{_shown(setting.env, raw)} is invalid: {exc}")
        if problems:
            raise ConfigError(*problems)
        settings = cls(**values)
        settings.validate()
        return settings

    def problems(self) -> list[str]:
        """Every cross-field problem of this configuration (empty when it is valid)."""
        found: list[str] = []
        issuer = urlsplit(self.issuer)
        if issuer.scheme not in {"http", "https"} or not issuer.netloc:
            found.append(f"{_shown('OAUTH2_ISSUER', self.issuer)} is not an http(s) URL")
        if issuer.query or issuer.fragment:
            found.append("OAUTH2_ISSUER must not have a query or fragment (RFC 8414 §2)")
        if self.authorization_code_ttl > 60:
            found.append("OAUTH2_AUTHORIZATION_CODE_TTL must be at most 60 seconds")
        if self.encryption_keys:
            from oauth2_server.crypto.keyring import parse_keyring  # it imports this module

            try:
                parse_keyring(self.encryption_keys, self.encryption_primary_key)
            except ConfigError as exc:
                found.extend(exc.problems)
        if self.production:
            if not self.encryption_keys:
                found.append(
                    "OAUTH2_ENCRYPTION_KEYS is required when OAUTH2_ENV=production "
                    "(`oauth2-server keys generate-encryption-key` makes one)"
                )
            if issuer.scheme != "https":
                found.append("OAUTH2_ISSUER must be https when OAUTH2_ENV=production")
            if self.is_sqlite:
                found.append("OAUTH2_DATABASE_URL must be PostgreSQL when OAUTH2_ENV=production")
        return found

    def validate(self) -> None:
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

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and the CLI use it)."""
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        current.update(changes)
        return Settings(**current)


def settings_table_markdown() -> str:
    """README's configuration table, generated from SETTINGS."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "(empty)"
        rows.append(f"| `{s.env}` | {default} | {s.doc} |")
    return "\n".join(rows)
