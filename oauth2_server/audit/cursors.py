"""Opaque, tamper-evident keyset pagination cursors, signed with `itsdangerous`.

A cursor is `base64url(JSON {"s": scope, "p": position}) "." base64url(HMAC-SHA256)`,
signed and checked by itsdangerous's `Serializer` (never compressed, so the form is
always that; itsdangerous's `URLSafeSerializer` would zlib-compress some) under the key
`keyring.derive(CURSOR_KEY_PURPOSE)` with that purpose as itsdangerous's salt. A client
can neither forge a position nor reuse a cursor with another query: `scope` names the
listing and a digest of its filters. Cursors carry no secrets; a rotated primary
encryption key invalidates outstanding cursors (start the listing again), and so did the
switch from the earlier hand-written HMAC form (paging cursors are short-lived).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from itsdangerous import BadData, Serializer
from itsdangerous.encoding import base64_decode, base64_encode

CURSOR_KEY_PURPOSE = b"oauth2-server pagination cursor"
_INVALID = "cursor is invalid or was tampered with"


class CursorError(ValueError):
    """The cursor was altered, truncated, or belongs to another query (HTTP 400)."""


def query_scope(name: str, filters: Any) -> str:
    """A cursor scope: the listing's name and a digest of its filters (any JSON value)."""
    encoded = json.dumps(filters, sort_keys=True, separators=(",", ":"), default=str)
    return f"{name}:{hashlib.sha256(encoded.encode()).hexdigest()[:24]}"


class _Base64JSON:
    """itsdangerous's payload serializer for cursors: compact JSON in base64url."""

    @staticmethod
    def dumps(value: Any) -> str:
        return base64_encode(json.dumps(value, separators=(",", ":"))).decode()

    @staticmethod
    def loads(payload: str) -> Any:
        return json.loads(base64_decode(payload))


class CursorCodec:
    """Signs and checks cursors with one 32-byte key (HMAC-SHA256, itsdangerous)."""

    def __init__(self, key: bytes) -> None:
        self._serializer = Serializer(
            key,
            salt=CURSOR_KEY_PURPOSE,
            serializer=_Base64JSON,
            signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha256},
        )

    def encode(self, scope: str, position: list[Any]) -> str:
        """A cursor for resuming `scope` after `position` (a JSON list)."""
        return self._serializer.dumps({"s": scope, "p": position})

    def decode(self, cursor: str, scope: str) -> list[Any]:
        """The position inside a cursor made by `encode` for the same scope.

        Raises CursorError when the signature does not verify (tampered or foreign
        cursor) or the cursor was made for another query.
        """
        try:
            data = self._serializer.loads(cursor)
        except BadData:
            raise CursorError(_INVALID) from None
        if not isinstance(data, dict) or not isinstance(data.get("p"), list):
            raise CursorError(_INVALID)
        if data.get("s") != scope:
            raise CursorError("cursor belongs to another query: repeat the same filters")
        return data["p"]
