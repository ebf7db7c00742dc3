"""The admin API's HTTP plumbing: bearer authentication, JSON bodies, errors, paging.

Authentication is RFC 6750 §2.1: `Authorization: Bearer <access token>` issued by this
server, verified with the OAuthService's `AccessTokenCodec` (signature, issuer, expiry,
`typ`) and then by its `jti` row (not revoked, not expired), with scope `admin` (§3.1):

- no credentials: 401 with `WWW-Authenticate: Bearer realm="oauth2-server"` (no error
  code, §3.1);
- a malformed Authorization header: 400 `invalid_request`;
- a token that is not valid, revoked or expired: 401 `invalid_token`;
- a valid token without scope `admin`: 403 `insufficient_scope`.

Every error body is JSON `{"error", "error_description", "field"?}` where `field` names
the offending body field, query parameter or path parameter, and carries
`Cache-Control: no-store`, like every admin response.

Text from outside is refused with a 400 naming its field when it holds a control character
(U+0000-U+001F, U+007F; PostgreSQL cannot store NUL) or, in JSON, a lone surrogate (not
encodable as UTF-8); integers must fit a 64-bit column.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from oauth2_server.audit.cursors import CURSOR_KEY_PURPOSE, CursorCodec, CursorError, query_scope
from oauth2_server.audit.log import AuditEvent, RequestContext
from oauth2_server.logs import note_client
from oauth2_server.storage.tokens import get_access_token
from oauth2_server.web.forms import BadRequest, parse_params, read_body, request_context

ADMIN_SCOPE = "admin"
# Characters no admin string may hold: C0 controls, DEL, and (JSON \ud800 escapes) lone
# surrogates.
INVALID_TEXT = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
INT64 = range(-(2**63), 2**63)
REALM = "oauth2-server"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
DEFAULT_PAGE = 50
MAX_PAGE = 500


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
    return AdminError(400, "invalid_request", description, field)


def not_found(field: str, description: str) -> AdminError:
    return AdminError(404, "not_found", description, field)


def conflict(field: str, description: str) -> AdminError:
    return AdminError(409, "conflict", description, field)


def error_response(exc: AdminError) -> JSONResponse:
    body = {"error": exc.error, "error_description": exc.description}
    if exc.field:
        body["field"] = exc.field
    return JSONResponse(body, exc.status, headers={**NO_STORE, **exc.headers})


def json_response(body: Any, status: int = 200) -> JSONResponse:
    """A JSON answer with `Cache-Control: no-store` (it may carry a secret once)."""
    return JSONResponse(body, status, headers=NO_STORE)


@dataclass(frozen=True)
class Actor:
    """Who makes an admin change: the admin client and its token's `jti` (API), or the
    operator of the CLI. Audit rows of admin changes carry `client_id` = the admin
    client (null from the CLI)."""

    client_id: str | None
    token_id: str | None
    context: RequestContext = field(default_factory=RequestContext)
    via: str = "api"
    operator: str | None = None

    def event(self, action: str, **kwargs: Any) -> AuditEvent:
        """An `admin_*` audit event by this actor; `details` gets `via`, and `admin_jti`
        (API) or `operator` (CLI, the OS user)."""
        details = {"via": self.via, **kwargs.pop("details", {})}
        if self.token_id:
            details["admin_jti"] = self.token_id
        if self.operator:
            details["operator"] = self.operator
        return AuditEvent(action, self.context, client_id=self.client_id, details=details, **kwargs)


def _bearer_challenge(error: str | None = None, description: str | None = None) -> str:
    parts = [f'realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    if error == "insufficient_scope":
        parts.append(f'scope="{ADMIN_SCOPE}"')
    return "Bearer " + ", ".join(parts)


def _unauthorized(error: str | None, description: str) -> AdminError:
    return AdminError(
        401,
        error or "invalid_token",
        description,
        headers={"WWW-Authenticate": _bearer_challenge(error, description if error else None)},
    )


TOKEN68 = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")


async def authenticate(request: Request) -> Actor:
    """The admin behind a request (RFC 6750 §2.1, §3.1). Raises AdminError 400/401/403."""
    header = request.headers.get("authorization")
    scheme, _, credentials = (header or "").partition(" ")
    if not header or scheme.lower() != "bearer":
        raise _unauthorized(
            None, "an access token with scope 'admin' is required: Authorization: Bearer …"
        )
    credentials = credentials.strip()
    if not TOKEN68.match(credentials):
        raise AdminError(
            400,
            "invalid_request",
            "malformed Authorization header (RFC 6750 §2.1)",
            "Authorization",
            {"WWW-Authenticate": _bearer_challenge("invalid_request")},
        )
    service = request.app.state.oauth
    claims = service.codec.decode(credentials)
    if claims is None:
        raise _unauthorized("invalid_token", "the access token is invalid or expired")
    row = await service.bridge.read(lambda db: get_access_token(db, claims["jti"]))
    if row is None or row.revoked_at is not None or row.expires_at <= datetime.now(UTC):
        raise _unauthorized("invalid_token", "the access token was revoked or has expired")
    if ADMIN_SCOPE not in row.scope.split():
        raise AdminError(
            403,
            "insufficient_scope",
            "this endpoint requires scope 'admin'",
            headers={"WWW-Authenticate": _bearer_challenge("insufficient_scope")},
        )
    return Actor(row.client_id, row.jti, request_context(request))


Handler = Callable[[Request, Actor], Awaitable[Response]]


def admin_endpoint(**openapi: Any) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Wrap a handler: authenticate, turn AdminError into its JSON answer. Keyword
    arguments (`body`, `query`, `responses`, `tag`) document the operation in
    /admin/openapi.json."""

    def decorate(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            try:
                actor = await authenticate(request)
                note_client(request.state, actor.client_id)  # for the access line
                check_path_params(request)
                return await handler(request, actor)
            except AdminError as exc:
                return error_response(exc)

        endpoint.openapi = openapi  # type: ignore[attr-defined]
        return endpoint

    return decorate


def check_path_params(request: Request) -> None:
    """Refuse a path parameter holding a control character (AdminError 400 naming it)."""
    for name, value in request.path_params.items():
        if isinstance(value, str) and INVALID_TEXT.search(value):
            raise bad_request(name, f"{name} must not contain control characters")


# -- bodies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One JSON body field: `kind` is string, boolean, integer or string[]."""

    kind: str
    doc: str
    required: bool = False
    max_length: int = 200
    max_items: int = 50

    def schema(self) -> dict[str, Any]:
        if self.kind == "string[]":
            item = {"type": "string", "maxLength": self.max_length}
            return {
                "type": "array",
                "items": item,
                "maxItems": self.max_items,
                "description": self.doc,
            }
        schema: dict[str, Any] = {"type": self.kind, "description": self.doc}
        if self.kind == "string":
            schema["maxLength"] = self.max_length
        return schema


Spec = Mapping[str, Field]


def body_schema(spec: Spec) -> dict[str, Any]:
    """The JSON Schema of a body spec (additional properties refused)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {name: f.schema() for name, f in spec.items()},
        "required": [name for name, f in spec.items() if f.required],
    }


def _check(name: str, f: Field, value: Any) -> Any:
    if f.kind == "boolean":
        if not isinstance(value, bool):
            raise bad_request(name, f"{name} must be true or false")
    elif f.kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad_request(name, f"{name} must be an integer")
        if value not in INT64:
            raise bad_request(name, f"{name} is out of range")
    elif f.kind == "string":
        if not isinstance(value, str):
            raise bad_request(name, f"{name} must be a string")
        if len(value) > f.max_length:
            raise bad_request(name, f"{name} is longer than {f.max_length} characters")
        if INVALID_TEXT.search(value):
            raise bad_request(name, f"{name} must not contain control characters")
    else:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad_request(name, f"{name} must be an array of strings")
        if len(value) > f.max_items:
            raise bad_request(name, f"{name} has more than {f.max_items} items")
        if any(len(v) > f.max_length for v in value):
            raise bad_request(name, f"an item of {name} is longer than {f.max_length} characters")
        if any(INVALID_TEXT.search(v) for v in value):
            raise bad_request(name, f"an item of {name} contains control characters")
    return value


def validate(spec: Spec, data: Any) -> dict[str, Any]:
    """Check a decoded JSON body against `spec`: an object, no unknown fields, required
    fields present, types right. Returns the fields given. Raises AdminError 400."""
    if not isinstance(data, dict):
        raise bad_request("body", "the body must be a JSON object")
    for name in data:
        if name not in spec:
            shown = INVALID_TEXT.sub("?", name[:64])
            raise bad_request(shown, f"unknown field {shown!r}")
    for name, f in spec.items():
        if f.required and name not in data:
            raise bad_request(name, f"{name} is required")
    return {name: _check(name, spec[name], value) for name, value in data.items()}


async def read_json(request: Request, spec: Spec) -> dict[str, Any]:
    """The request's JSON body validated against `spec` (Content-Type application/json,
    at most `OAUTH2_MAX_BODY_BYTES`, UTF-8). Raises AdminError 400/413/415."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise AdminError(415, "invalid_request", "Content-Type must be application/json", "body")
    try:
        raw = await read_body(request, request.app.state.oauth.settings.max_body_bytes)
    except BadRequest as exc:
        raise AdminError(exc.status, "invalid_request", exc.description, "body") from None
    try:
        data = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request("body", f"malformed JSON: {exc}") from None
    return validate(spec, data)


# -- query strings and paging ---------------------------------------------------------


def query_params(
    request: Request, allowed: set[str], repeatable: frozenset[str] = frozenset()
) -> dict[str, list[str]]:
    """Query parameters (name → values); AdminError 400 naming an unknown or repeated
    parameter."""
    try:
        params = parse_params(request.url.query, allow_repeats=True)
    except BadRequest as exc:  # malformed, or a control character (naming the parameter)
        raise bad_request(exc.field or "query", exc.description) from None
    for name, values in params.items():
        if name not in allowed:
            raise bad_request(name, f"unknown query parameter {name!r}")
        if len(values) > 1 and name not in repeatable:
            raise bad_request(name, f"query parameter {name!r} is given more than once")
    return params


def page_size(params: Mapping[str, list[str]]) -> int:
    """`limit`: 1–MAX_PAGE, default DEFAULT_PAGE."""
    raw = (params.get("limit") or [None])[0]
    if raw is None:
        return DEFAULT_PAGE
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or not 1 <= int(raw) <= MAX_PAGE:
        raise bad_request("limit", f"limit must be an integer from 1 to {MAX_PAGE}")
    return int(raw)


def cursor_codec(request: Request) -> CursorCodec:
    """Cursors signed under the keyring's derived pagination key."""
    return make_cursor_codec(request.app.state.oauth.keys.keyring)


def make_cursor_codec(keyring: Any) -> CursorCodec:
    """A CursorCodec for a `Keyring` (the CLI builds its own from settings)."""
    return CursorCodec(keyring.derive(CURSOR_KEY_PURPOSE))


def decode_cursor(codec: CursorCodec, raw: str | None, scope: str) -> list[Any] | None:
    """The position in a `cursor` parameter; AdminError 400 naming `cursor` if tampered."""
    if raw is None:
        return None
    try:
        return codec.decode(raw, scope)
    except CursorError as exc:
        raise bad_request("cursor", str(exc)) from None


# The OpenAPI description of the paging parameters every admin listing takes.
PAGE_QUERY = {
    "limit": f"page size, 1–{MAX_PAGE} (default {DEFAULT_PAGE})",
    "cursor": "next_cursor of the previous page",
}


async def keyset_page(
    request: Request,
    name: str,
    read_page: Callable[[Any, list[Any] | None, int], dict[str, Any]],
) -> Response:
    """GET of a plain keyset-paged listing (`limit`, `cursor`; no other parameter).

    Decodes the signed cursor (400 naming `cursor` if tampered), reads one page with
    `read_page(session, after, limit)` — a dict with `items` and `next_position` — and
    answers it with `next_cursor` in place of the position.
    """
    params = query_params(request, {"limit", "cursor"})
    codec = cursor_codec(request)
    scope = query_scope(name, {})
    after = decode_cursor(codec, (params.get("cursor") or [None])[0], scope)
    limit = page_size(params)
    bridge = request.app.state.oauth.bridge
    page = await bridge.read(lambda session: read_page(session, after, limit))
    position = page.pop("next_position")
    page["next_cursor"] = codec.encode(scope, position) if position else None
    return json_response(page)


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, or None."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None
