"""The error of an invalid audit query (`audit.query`, `audit.ipfilter`, `audit.watermark`)."""

from __future__ import annotations


class AuditQueryError(ValueError):
    """A filter or cursor is invalid; `field` names it (HTTP 400, CLI exit 2)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
