"""The errors a registry service raises: typed, carrying the field at fault.

They are defined outside the HTTP layer so the command line can use the services too.
`admin.http` maps them to `{"error", "error_description", "field"}` JSON with `status`;
`cli.support` maps them to exit statuses (2 invalid, 3 not found, 4 conflict).
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class RegistryError(Exception):
    """A change or lookup refused: `field` (body field, option or path parameter) and a
    `description` for the admin. `status` and `error` are the HTTP status and RFC 6749
    §5.2-style error code the admin API answers with."""

    status = 400
    error = "invalid_request"

    def __init__(self, field: str, description: str) -> None:
        super().__init__(description)
        self.field = field
        self.description = description


class FieldInvalid(RegistryError):
    """A value breaks a rule (HTTP 400 `invalid_request`; CLI exit status 2)."""


class NotFound(RegistryError):
    """The client, user, branch or token named does not exist (HTTP 404 `not_found`;
    CLI exit status 3)."""

    status = 404
    error = "not_found"


class Conflict(RegistryError):
    """The name or id is taken, or the state forbids the change (HTTP 409 `conflict`;
    CLI exit status 4)."""

    status = 409
    error = "conflict"


def require(found: T | None, field: str, description: str) -> T:
    """`found`, unless it is None (a lookup that found nothing): then NotFound naming
    `field` with `description`."""
    if found is None:
        raise NotFound(field, description)
    return found
