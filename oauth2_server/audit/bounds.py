"""Bounds on every value of an `oauth2_token_logs` row (DESIGN.md invariant 10).

`AuditEvent.row()` (oauth2_server.audit) applies them, the one place both audit paths
(`record()` in a change's transaction, `AuditBuffer` in batches) go through:

- text columns: `bound_text` to the column's length read from the table definition;
- NUL characters and UTF-16 surrogates, which PostgreSQL refuses in text and JSON (lone
  surrogates cannot even be encoded), become U+FFFD;
- a cut value keeps a prefix and ends with "\u2026" plus the first 12 hex digits of the
  SHA-256 of the whole value, so it stays searchable;
- `details` (JSON): `bound_details`; `flags`: `bound_flags`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from typing import Any

from sqlalchemy import String

from oauth2_server.db.models import TokenLog

# Each text column's length, from the table definition (never typed twice).
COLUMN_LIMITS: dict[str, int] = {
    column.name: column.type.length
    for column in TokenLog.__table__.columns
    if isinstance(column.type, String) and column.type.length
}
# `details` (JSON): string values and keys are cut to these many characters, containers to
# DETAILS_MAX_ITEMS entries and DETAILS_MAX_DEPTH levels, the whole to DETAILS_MAX_CHARS
# characters of JSON text. Flags: at most FLAGS_MAX_ITEMS of FLAG_MAX_CHARS characters.
DETAILS_MAX_CHARS = 8000
DETAILS_MAX_STRING = 1000
DETAILS_MAX_KEY = 64
DETAILS_MAX_ITEMS = 100
DETAILS_MAX_DEPTH = 6
FLAGS_MAX_ITEMS = 16
FLAG_MAX_CHARS = 40
# A cut value ends with TRUNCATION_MARK and the first DIGEST_CHARS hex digits of the SHA-256
# of the whole value (UTF-8), so the full value can still be searched for.
TRUNCATION_MARK = "\u2026"
DIGEST_CHARS = 12

# Characters PostgreSQL refuses in text and JSON: NUL, and UTF-16 surrogates (lone ones
# cannot even be encoded as UTF-8). Each is replaced with U+FFFD.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_REPLACEMENT = "\ufffd"


def digest_prefix(value: str) -> str:
    """The first DIGEST_CHARS hex digits of SHA-256 over `value` as UTF-8 (lone surrogates
    passed through), the search key of a cut value."""
    raw = value.encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:DIGEST_CHARS]


def bound_text(value: str, limit: int) -> str:
    """`value` made storable in a column of `limit` characters.

    NUL and surrogates become U+FFFD; a longer value keeps a prefix and ends with
    "…" plus `digest_prefix(value)`, `limit` characters in all (only the digest when
    `limit` is too small for a prefix). Idempotent for values already within bounds.
    """
    if len(value) <= limit and value.isascii() and "\x00" not in value:
        return value  # the common case, without a regex
    clean = _UNSTORABLE.sub(_REPLACEMENT, value)
    if len(clean) <= limit:
        return clean
    digest = digest_prefix(value)
    keep = limit - len(TRUNCATION_MARK) - len(digest)
    if keep <= 0:
        return digest[:limit]
    return clean[:keep] + TRUNCATION_MARK + digest


def _bound_json(value: Any, depth: int, limit: int) -> Any:
    """A JSON-safe copy of `value` within the `details` bounds; `limit`: string length."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):  # a 64-bit range; longer ones are not even printable
        return (
            value
            if -(2**63) <= value < 2**63
            else f"{TRUNCATION_MARK}int of {value.bit_length()} bits"
        )
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # NaN/Infinity are not JSON
    if isinstance(value, str):
        return bound_text(value, limit)
    if depth >= DETAILS_MAX_DEPTH:
        return f"{TRUNCATION_MARK}nested deeper than {DETAILS_MAX_DEPTH}"
    if isinstance(value, dict):
        items = list(value.items())
        bounded = {
            bound_text(str(key), DETAILS_MAX_KEY): _bound_json(item, depth + 1, limit)
            for key, item in items[:DETAILS_MAX_ITEMS]
        }
        if len(items) > DETAILS_MAX_ITEMS:
            bounded[TRUNCATION_MARK] = f"{len(items) - DETAILS_MAX_ITEMS} more"
        return bounded
    if isinstance(value, list | tuple | set | frozenset):
        entries = list(value)
        bounded_list = [_bound_json(item, depth + 1, limit) for item in entries[:DETAILS_MAX_ITEMS]]
        if len(entries) > DETAILS_MAX_ITEMS:
            bounded_list.append(f"{TRUNCATION_MARK}{len(entries) - DETAILS_MAX_ITEMS} more")
        return bounded_list
    return bound_text(str(value), limit)  # datetimes, UUIDs, …: their text


# `details` with at most this many entries of at most this many characters in all, keys and
# values all plain (see `_plain`), is within every bound as it is (even with each character
# escaped as \\u00XX in JSON text), so it skips the walk and the size check.
_PLAIN_MAX_ITEMS = 8
_PLAIN_MAX_CHARS = 1000


def _plain(details: Any) -> bool:
    if type(details) is not dict or len(details) > _PLAIN_MAX_ITEMS:
        return False
    total = 0
    for key, value in details.items():
        if type(key) is not str or len(key) > DETAILS_MAX_KEY or not key.isascii() or "\x00" in key:
            return False
        total += len(key)
        if type(value) is str:
            if not value.isascii() or "\x00" in value:
                return False
            total += len(value)
        elif (
            value is not None
            and type(value) is not bool
            and (type(value) is not int or not -(2**63) <= value < 2**63)
        ):
            return False
    return total <= _PLAIN_MAX_CHARS


def bound_details(details: dict[str, Any]) -> dict[str, Any]:
    """`details` made storable: JSON types only, NUL/surrogates replaced, each string at
    most DETAILS_MAX_STRING characters, containers at most DETAILS_MAX_ITEMS entries and
    DETAILS_MAX_DEPTH deep. Past DETAILS_MAX_CHARS characters of JSON in all, the row keeps
    `{"truncated": <cut JSON text>}` instead (marker and digest as in `bound_text`)."""
    if _plain(details):
        return details  # the common case: a few short ASCII strings and numbers
    bounded = _bound_json(details, 0, DETAILS_MAX_STRING)
    if not isinstance(bounded, dict):
        bounded = {"value": bounded}
    text = json.dumps(bounded, ensure_ascii=False, separators=(",", ":"))
    if len(text) <= DETAILS_MAX_CHARS:
        return bounded
    return {"truncated": bound_text(text, DETAILS_MAX_CHARS - 20)}


def bound_flags(flags: list[str]) -> list[str]:
    """At most FLAGS_MAX_ITEMS flags of at most FLAG_MAX_CHARS storable characters."""
    return [bound_text(str(flag), FLAG_MAX_CHARS) for flag in flags[:FLAGS_MAX_ITEMS]]


# The HKDF purpose of the key behind `unknown_username_subject` (crypto.keyring.derive).
UNKNOWN_USERNAME_PURPOSE = b"oauth2-server audit unknown username"
UNKNOWN_USERNAME_PREFIX = "unknown:"


def unknown_username_subject(key: bytes, username: str) -> str:
    """The `subject` a failed sign-in with a username no user has is recorded under
    (issue #11 item 1): `unknown:` and 32 hex digits of HMAC-SHA256 over the casefolded
    username, under `key` (derived from the keyring's primary key with
    `UNKNOWN_USERNAME_PURPOSE`). Searchable with `oauth2-server audit username-digest`,
    not readable without the keyring; never a real subject (those have no `:`)."""
    digest = hmac.new(key, username.casefold().encode("utf-8", "surrogatepass"), "sha256")
    return UNKNOWN_USERNAME_PREFIX + digest.hexdigest()[:32]
