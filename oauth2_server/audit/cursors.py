"""Opaque, tamper-evident keyset pagination cursors.

A cursor is `base64url(JSON {"s": scope, "p": position}) "." base64url(HMAC-SHA256)`,
the MAC under a key derived from the keyring (`keyring.derive(CURSOR_KEY_PURPOSE)`), so
a client can neither forge a position nor reuse a cursor with another query: `scope`
names the listing and a digest of its filters. Cursors carry no secrets; a rotated
primary encryption key invalidates outstanding cursors (start the listing again).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

CURSOR_KEY_PURPOSE = b"oauth2-server pagination cursor"
MAC_BYTES = 16


class CursorError(ValueError):
    """The cursor was altered, truncated, or belongs to another query (HTTP 400)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def query_scope(name: str, filters: Any) -> str:
    """A cursor scope: the listing's name and a digest of its filters (any JSON value)."""
    encoded = json.dumps(filters, sort_keys=True, separators=(",", ":"), default=str)
    return f"{name}:{hashlib.sha256(encoded.encode()).hexdigest()[:24]}"


class CursorCodec:
    """Signs and checks cursors with one 32-byte key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return _b64(digest[:MAC_BYTES])

    def encode(self, scope: str, position: list[Any]) -> str:
        """A cursor for resuming `scope` after `position` (a JSON list)."""
        payload = _b64(json.dumps({"s": scope, "p": position}, separators=(",", ":")).encode())
        return f"{payload}.{self._mac(payload)}"

    def decode(self, cursor: str, scope: str) -> list[Any]:
        """The position inside a cursor made by `encode` for the same scope.

        Raises CursorError when the MAC does not verify (tampered or foreign cursor) or
        the cursor was made for another query.
        """
        payload, sep, mac = cursor.partition(".")
        if not sep or not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            raise CursorError("cursor is invalid or was tampered with")
        try:
            data = json.loads(_unb64(payload))
        except ValueError:
            raise CursorError("cursor is invalid or was tampered with") from None
        if not isinstance(data, dict) or not isinstance(data.get("p"), list):
            raise CursorError("cursor is invalid or was tampered with")
        if data.get("s") != scope:
            raise CursorError("cursor belongs to another query: repeat the same filters")
        return data["p"]
