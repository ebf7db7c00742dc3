"""Logging setup for `serve`, with a redacting filter as the second line of defence.

The first line of defence is at the source: records holding secrets or their hashes
(`OAuthClient`, `ClientRecord`, `UserRecord`, token rows, upstream token responses) leave
them out of their `repr`. `RedactingFilter`, installed on every handler `serve`
configures, then rewrites any log record that still carries a secret parameter by name:

- `name=value` pairs in query strings and forms (a library's DEBUG line quoting
  `/upstream/google/callback?code=…&state=…`; our access line never carries a query
  string), `name='value'` in dataclass reprs and
  `'name': 'value'` / `"name": "value"` in dict and JSON text, for the names in
  `SECRET_NAMES` (RFC 6749 §4.1.2 `code`, §6 `refresh_token`, §2.3.1 `client_secret`,
  RFC 7636 `code_verifier`, RFC 8693 `subject_token`/`actor_token`, RFC 7009/7662 `token`,
  RFC 7521 `assertion`, `password`, `state`, …) and any `*_hash`/`*_secret`/`*_token`
  name;
- `Authorization:` credentials (RFC 7617 Basic, RFC 6750 Bearer);
- anything shaped like a JWT (three base64url segments starting `eyJ`), an argon2 hash
  (`$argon2id$…`) or a SHA-256 hex digest (64 hex digits).

Library loggers that print SQL parameters at DEBUG (SQLAlchemy, aiosqlite) stay at
WARNING whatever `OAUTH2_LOG_LEVEL` says: their parameters are token and secret digests.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pythonjsonlogger.core
import pythonjsonlogger.json

REDACTED = "[redacted]"

SECRET_NAMES = (
    "client_secret",
    "password",
    "code",
    "code_verifier",
    "refresh_token",
    "access_token",
    "id_token",
    "subject_token",
    "actor_token",
    "token",
    "assertion",
    "state",
    "verified_secret",
    "secret",
)

# A name (exact, or ending in _hash, _secret, _token, _verifier, _ciphertext), optionally
# quoted, then `=` or `:`, then a value: quoted, or up to a delimiter.
_NAME = (
    r"(?:" + "|".join(SECRET_NAMES) + r"|[A-Za-z0-9_]*_(?:hash|secret|token|verifier|ciphertext))"
)
_PAIR = re.compile(
    r"(?P<key>(?<![A-Za-z0-9_])['\"]?" + _NAME + r"['\"]?\s*(?P<sep>=|:\s*))"
    r"(?P<value>b?'[^']*'|b?\"[^\"]*\"|[^\s&,;)}\]'\"]+)",
    re.IGNORECASE,
)
_AUTHORIZATION = re.compile(
    r"(?P<key>authorization['\"]?\s*[:=,]\s*['\"]?(?:basic|bearer|dpop)?\s*)"
    r"(?P<value>[^\s'\",)]+)",
    re.IGNORECASE,
)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_ARGON2 = re.compile(r"\$argon2(?:id|i|d)\$[^\s'\"]+")
_SHA256_HEX = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64}(?![0-9A-Fa-f])")

# Loggers whose DEBUG output is SQL parameters (digests of tokens and secrets).
QUIET_LOGGERS = ("sqlalchemy", "aiosqlite", "asyncpg", "httpcore", "hpack", "multipart")


def _pair(match: re.Match[str]) -> str:
    value = match.group("value")
    if value in {"None", "null", "''", '""'}:
        return match.group(0)
    return match.group("key") + REDACTED


def redact(text: str) -> str:
    """`text` with every secret value replaced by `[redacted]` (rules in the module doc)."""
    if not text:
        return text
    text = _AUTHORIZATION.sub(lambda m: m.group("key") + REDACTED, text)
    text = _PAIR.sub(_pair, text)
    text = _ARGON2.sub(REDACTED, text)
    text = _SHA256_HEX.sub(REDACTED, text)
    return _JWT.sub(REDACTED, text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's arguments, message and traceback through `redact`; never drops
    a record. Install it on handlers (a logger's filters miss propagated records)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
        elif isinstance(args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in args.items()}
        if record.name != "uvicorn.access":  # its formatter needs the argument tuple
            try:
                message = record.getMessage()
            except Exception:  # a malformed call: keep the record as it is, logging reports it
                return True
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


ACCESS_LOGGER = "oauth2_server.access"
LOG_FORMATS = ("text", "json")


@dataclass
class AccessFacts:
    """What the access line of one request knows beyond the HTTP exchange: its request id
    and, once the OAuth or admin layer authenticated a client (RFC 6749 §2.3), that
    client's id. `web.middleware.HttpMiddleware` puts one in `scope["state"]["access"]`."""

    request_id: str
    client_id: str | None = None


def note_client(state: Any, client_id: str | None) -> None:
    """Record the authenticated client's id (at most 128 characters) for the access line.
    `state` is a Starlette `request.state` or a scope's `state` dict; no-op without one."""
    facts = state.get("access") if isinstance(state, dict) else getattr(state, "access", None)
    if isinstance(facts, AccessFacts) and client_id:
        facts.client_id = client_id[:128]


class UtcFormatter(logging.Formatter):
    """`%(asctime)s` as ISO-8601 UTC with milliseconds: `2026-11-30T11:40:02.123Z`."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        moment = datetime.fromtimestamp(record.created, tz=UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


class JsonFormatter(pythonjsonlogger.json.JsonFormatter):
    """One JSON object per line: `timestamp` (ISO-8601 UTC), `level`, `logger`, `message`,
    plus a record's extra fields (the access line's); tracebacks go through `redact`."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp=True,
            # uvicorn's records carry an ANSI-coloured copy of the message
            reserved_attrs=[*pythonjsonlogger.core.RESERVED_ATTRS, "color_message"],
        )

    def formatException(self, ei: Any) -> str:  # noqa: N802
        return redact(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return redact(super().formatStack(stack_info))


def log_config(level: str, fmt: str = "text") -> dict[str, Any]:
    """The one logging setup of `serve` (a `logging.config.dictConfig` dict, which uvicorn
    applies in the main process and again in every worker): the root logger (this
    package, uvicorn, Authlib, httpx, …) at `level` ("debug" … "error") writes to stderr
    through one handler, filtered by `RedactingFilter`, formatted as `fmt`:

    - "text": `2026-11-30T11:40:02.123Z INFO oauth2_server.access: GET /healthz 200 …`
    - "json": `{"timestamp": "2026-11-30T11:40:02.123456+00:00", "level": "INFO",
      "logger": "oauth2_server.access", "message": …, "route": …}`

    uvicorn's own loggers propagate to it; uvicorn's access log is replaced by ours
    (`web.middleware`), so `uvicorn.access` stays at WARNING.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {LOG_FORMATS}")
    quiet = "WARNING" if level.upper() in {"DEBUG", "INFO"} else level.upper()
    loggers: dict[str, Any] = {
        name: {"handlers": [], "propagate": True}
        for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi")
    }
    loggers["uvicorn.access"] = {"handlers": [], "propagate": True, "level": "WARNING"}
    for name in QUIET_LOGGERS:
        loggers[name] = {"level": quiet}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "oauth2_server.logs.RedactingFilter"}},
        "formatters": {
            "text": {
                "()": "oauth2_server.logs.UtcFormatter",
                "format": "%(asctime)s %(levelname)s %(name)s: %(message)s",
            },
            "json": {"()": "oauth2_server.logs.JsonFormatter"},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": fmt,
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": loggers,
        "root": {"handlers": ["stderr"], "level": level.upper()},
    }


def install_on_root() -> None:
    """For commands other than `serve` (after `logging.basicConfig`): the same filter on
    the root logger's handlers, and the SQL-parameter loggers held at WARNING."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(max(logging.WARNING, root.level))
