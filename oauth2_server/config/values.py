"""The value types of settings: how one environment variable's text becomes a value.

Each type is an `Annotated` pydantic type whose validator turns the variable's text into
the value or raises ValueError with the words the start-up message ends with ("expected an
integer"). Values that are not text (defaults, keyword arguments) pass through to
pydantic's own type check.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field
from pydantic.fields import FieldInfo
from pydantic_settings import NoDecode

T = TypeVar("T")


def is_secret(field: FieldInfo) -> bool:
    """Whether `field`'s type is `SecretText` or `SecretDatabaseUrl`."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get("secret") is True


def _from_text(parse: Callable[[str], Any]) -> BeforeValidator:
    """A pydantic validator that applies `parse` to text and passes other values on."""
    return BeforeValidator(lambda raw: parse(raw) if isinstance(raw, str) else raw)


def parse_bool(raw: str) -> bool:
    """`1 true yes on` / `0 false no off`, any case, surrounding blanks ignored.

    Raises ValueError("expected true or false") on anything else."""
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def parse_int(raw: str) -> int:
    """A decimal integer; raises ValueError("expected an integer")."""
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError("expected an integer") from None


def parse_float(raw: str) -> float:
    """A decimal number; raises ValueError("expected a number")."""
    try:
        return float(raw.strip())
    except ValueError:
        raise ValueError("expected a number") from None


def bounded(convert: Callable[[str], T], accept: Callable[[T], bool], expected: str):
    """A parser: `convert`, then ValueError(`expected`) unless `accept(value)` (NaN never
    passes a comparison, so it is refused)."""

    def parse(raw: str) -> T:
        value = convert(raw)
        if not accept(value):
            raise ValueError(expected)
        return value

    return parse


def choice(*allowed: str) -> Callable[[str], str]:
    """A parser accepting exactly one of `allowed` (case-sensitive)."""

    def parse(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return raw

    return parse


def parse_database_url(raw: str) -> str:
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


def parse_url_or_empty(raw: str) -> str:
    """An absolute http(s) URL, or empty; raises ValueError otherwise."""
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


def parse_scope_descriptions(raw: str) -> tuple[tuple[str, str], ...]:
    """A JSON object {scope: description} over BUILTIN_SCOPE_DESCRIPTIONS; empty: the
    built-ins. Scopes are RFC 6749 §3.3 scope-tokens; descriptions 1-200 printable
    characters; at most 1000 entries. Sorted (scope, description) pairs (hashable).

    Raises ValueError naming the first fault."""
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


Flag = Annotated[bool, _from_text(parse_bool)]
PositiveInt = Annotated[
    int, _from_text(bounded(parse_int, lambda v: v > 0, "expected a positive integer"))
]
NonNegativeInt = Annotated[
    int, _from_text(bounded(parse_int, lambda v: v >= 0, "expected an integer ≥ 0"))
]
PositiveFloat = Annotated[
    float, _from_text(bounded(parse_float, lambda v: v > 0, "expected a positive number"))
]
NonNegativeFloat = Annotated[
    float, _from_text(bounded(parse_float, lambda v: v >= 0, "expected a number ≥ 0"))
]
GraceSeconds = Annotated[
    float,
    _from_text(bounded(parse_float, lambda v: 0 <= v <= 300, "expected seconds from 0 to 300")),
]
DatabaseUrl = Annotated[str, _from_text(parse_database_url)]
UrlOrEmpty = Annotated[str, _from_text(parse_url_or_empty)]
# NoDecode: pydantic-settings would read a tuple-typed variable as JSON itself.
ScopeDescriptions = Annotated[
    tuple[tuple[str, str], ...], NoDecode, _from_text(parse_scope_descriptions)
]
Environment = Annotated[str, _from_text(choice("development", "production"))]
LogLevel = Annotated[str, _from_text(choice("debug", "info", "warning", "error"))]
LogFormat = Annotated[str, _from_text(choice("auto", "text", "json"))]
# A setting holding a password or a key: its value is never shown in a message nor a repr.
_SECRET = Field(repr=False, json_schema_extra={"secret": True})
SecretText = Annotated[str, _SECRET]
SecretDatabaseUrl = Annotated[DatabaseUrl, _SECRET]
