"""Keyset pages of admin listings: sizes, signed cursors, timestamps in answers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from oauth2_server.audit.cursors import CURSOR_KEY_PURPOSE, CursorCodec

DEFAULT_PAGE = 50
MAX_PAGE = 500


def make_cursor_codec(keyring: Any) -> CursorCodec:
    """A CursorCodec signing under the `Keyring`'s derived pagination key (the admin API
    and the CLI sign alike, so a cursor printed by one works in the other)."""
    return CursorCodec(keyring.derive(CURSOR_KEY_PURPOSE))


def after_int(after: list[Any] | None) -> int | None:
    """The row id a decoded cursor position holds, or None (first page)."""
    return after[0] if after and isinstance(after[0], int) else None


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, or None."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None
