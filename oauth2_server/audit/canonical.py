"""The bytes an audit row's hash covers: the hash chain's two formats.

    row_hash = SHA-256(prev_hash ‖ "\\n" ‖ canonical bytes of the row and its seal_seq)

- Format 2 (current): RFC 8785 (JSON Canonicalization Scheme, the `rfc8785` library) of
  the row as exported (`rows.content_json`: ISO 8601 `Z` time, risk as a number) plus
  `"seal_seq"` and `"chain_format": 2`. Anyone holding a JSON Lines export can recompute
  it with any RFC 8785 implementation. Numbers compare as JSON numbers (RFC 8785 §3.2.2.3:
  `1` and `1.0` are one value).
- Format 1 (rows sealed before RFC 8785 was adopted): Python's `json.dumps(sort_keys=True,
  separators=(",", ":"), ensure_ascii=False)` of the array `[1, id, created_at (ISO 8601,
  microseconds, +00:00), action, client_id, subject, branch_id, grant_type, token_id,
  family_id, ip, user_agent, request_id, risk_score ("0.00" text), flags, details,
  seal_seq]`, UTF-8.

Both carry their format number inside the hashed bytes and each is injective, so a row's
bytes under one format never equal another row's under the other: accepting either
format (`matching_format`) lets no one forge a row without a SHA-256 second preimage.
That is why existing chains are not re-hashed (re-hashing is what a forger does) and no
switch point is recorded: rows sealed by an older release during a rolling upgrade keep
verifying. Sealing (`seal_hash`) uses format 2, and format 1 only for a row RFC 8785
cannot express: an integer in `details` beyond ±(2^53 − 1) (I-JSON), which only releases
before `bounds` limited integers to that range could write.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC
from typing import Any

import rfc8785

from oauth2_server.audit.rows import CONTENT_FIELDS, content_json

FORMAT_LEGACY = 1
FORMAT_RFC8785 = 2
FORMATS = (FORMAT_RFC8785, FORMAT_LEGACY)  # the order `matching_format` tries them in


def canonical_legacy(row: Any, seal_seq: int) -> bytes:
    """Format 1 bytes of `row` sealed as `seal_seq` (see the module docstring).

    Raises UnicodeEncodeError for text UTF-8 cannot encode (a lone surrogate)."""
    content: list[Any] = [FORMAT_LEGACY]
    for name in CONTENT_FIELDS:
        value = getattr(row, name)
        if name == "created_at":
            value = value.astimezone(UTC).isoformat(timespec="microseconds")
        elif name == "risk_score":
            value = format(float(value), ".2f")
        content.append(value)
    content.append(seal_seq)
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_rfc8785(row: Any, seal_seq: int) -> bytes:
    """Format 2 bytes of `row` sealed as `seal_seq`: RFC 8785 of the exported row.

    Raises rfc8785.CanonicalizationError for a value RFC 8785 cannot express (an
    integer beyond ±(2^53 − 1), a non-finite float, a lone surrogate)."""
    content = content_json(row)
    content["seal_seq"] = seal_seq
    content["chain_format"] = FORMAT_RFC8785
    return rfc8785.dumps(content)


_CANONICAL = {FORMAT_LEGACY: canonical_legacy, FORMAT_RFC8785: canonical_rfc8785}


def format_hash(chain_format: int, prev_hash: str, row: Any, seal_seq: int) -> str:
    """`row_hash` of `row` sealed as `seal_seq` after a row hashed `prev_hash`, in
    `chain_format`. Raises ValueError (UnicodeEncodeError, CanonicalizationError) when
    the format cannot express the row."""
    data = _CANONICAL[chain_format](row, seal_seq)
    return hashlib.sha256(prev_hash.encode() + b"\n" + data).hexdigest()


def seal_hash(prev_hash: str, row: Any, seal_seq: int) -> tuple[str, int]:
    """The hash a sealer gives `row` and its format: RFC 8785 (format 2), or format 1
    for a row RFC 8785 cannot express (module docstring)."""
    try:
        return format_hash(FORMAT_RFC8785, prev_hash, row, seal_seq), FORMAT_RFC8785
    except rfc8785.CanonicalizationError:
        return format_hash(FORMAT_LEGACY, prev_hash, row, seal_seq), FORMAT_LEGACY


def link_hash(prev_hash: str, row: Any, seal_seq: int) -> str:
    """`row_hash` of a row sealed as number `seal_seq` after a row hashed `prev_hash`."""
    return seal_hash(prev_hash, row, seal_seq)[0]


def matching_format(
    prev_hash: str, row: Any, seal_seq: int, row_hash: str | None, first: int = FORMAT_RFC8785
) -> int | None:
    """The format under which `row_hash` is the hash of `row` sealed as `seal_seq` after
    `prev_hash`, trying `first` first; None when none matches (the row was altered).
    Content no format can express (only an altered row holds it) matches none."""
    for chain_format in (first, *(f for f in FORMATS if f != first)):
        try:
            digest = format_hash(chain_format, prev_hash, row, seal_seq)
        except ValueError:
            continue
        if digest == row_hash:
            return chain_format
    return None
