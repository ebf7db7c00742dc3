"""The admin API's errors and their one JSON form (`admin.models.Error`).

Every error body is `{"error", "error_description", "field"?}` where `field` names the
offending body field, query parameter or path parameter, and carries
`Cache-Control: no-store`, like every admin response.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from oauth2_server.registry.errors import RegistryError

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class AdminError(Exception):
    """An admin request that fails: HTTP `status`, `error` code, a description naming
    the problem, and the `field` (body field, query or path parameter) at fault."""

    def __init__(
        self,
        status: int,
        error: str,
        description: str,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.field = field
        self.headers = dict(headers or {})


def bad_request(field: str, description: str) -> AdminError:
    """400 `invalid_request` naming `field`."""
    return AdminError(400, "invalid_request", description, field)


def not_found(field: str, description: str) -> AdminError:
    """404 `not_found` naming `field`."""
    return AdminError(404, "not_found", description, field)


def error_response(exc: AdminError | RegistryError) -> JSONResponse:
    """The JSON answer of an admin error or of a registry service's typed error (400
    FieldInvalid, 404 NotFound, 409 Conflict): `{"error", "error_description", "field"}`."""
    body = {"error": exc.error, "error_description": exc.description}
    if exc.field:
        body["field"] = exc.field
    headers = exc.headers if isinstance(exc, AdminError) else {}
    return JSONResponse(body, exc.status, headers={**NO_STORE, **headers})


def json_response(body: Any, status: int = 200) -> JSONResponse:
    """A JSON answer with `Cache-Control: no-store` (it may carry a secret once)."""
    return JSONResponse(body, status, headers=NO_STORE)
