"""The admin API's HTTP plumbing: bearer authentication, the endpoint wrapper, paging.

Authentication is RFC 6750 §2.1: `Authorization: Bearer <access token>` issued by this
server, verified with the OAuthService's `AccessTokenCodec` (signature, issuer, expiry,
`typ`) and then by its `jti` row (not revoked, not expired), with scope `admin` (§3.1). A
DPoP-bound token (RFC 9449) comes as `Authorization: DPoP <token>` with a `DPoP` proof of
its key for this request (§7.1); presented as a bearer token it is `invalid_token`:

- no credentials: 401 with `WWW-Authenticate: Bearer realm="oauth2-server"` (no error
  code, §3.1);
- a malformed Authorization header: 400 `invalid_request`;
- a token that is not valid, revoked or expired: 401 `invalid_token`;
- a valid token without scope `admin`: 403 `insufficient_scope`;
- with OAUTH2_ADMIN_REQUIRE_PERSON on, a token of an admin client registered to no
  person (the bootstrap client among them): 403 `person_required` (issue #11 item 2).

The `Actor` of an accepted token names the admin client, the token's `jti`, the person
the client is registered to and whether it is the bootstrap client, read from the
client's row on every request (a change of person applies to the next request).

Errors are `admin.errors` (one JSON form); bodies are read and validated by
`admin.bodies` with their `admin.models` model, which `admin_endpoint` records for
/admin/openapi.json. Text from outside is refused with a 400 naming its field when it
holds a control character (U+0000-U+001F, U+007F; PostgreSQL cannot store NUL) or, in
JSON, a lone surrogate (not encodable as UTF-8).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from oauth2_server.admin.answers import Page
from oauth2_server.admin.bodies import read_json
from oauth2_server.admin.errors import AdminError, bad_request, error_response, json_response
from oauth2_server.audit.cursors import CursorCodec, CursorError, query_scope
from oauth2_server.logs import note_client
from oauth2_server.oauth.dpop import ALGORITHMS, DPoPError
from oauth2_server.registry.actor import Actor
from oauth2_server.registry.errors import RegistryError
from oauth2_server.registry.paging import DEFAULT_PAGE, MAX_PAGE, make_cursor_codec
from oauth2_server.storage.clients import ClientView, get_client_view
from oauth2_server.storage.tokens import AccessTokenRecord, get_access_token
from oauth2_server.web.forms import BadRequest, parse_params, request_context

ADMIN_SCOPE = "admin"
# Characters no path parameter may hold: C0 controls, DEL, lone surrogates.
INVALID_TEXT = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
REALM = "oauth2-server"
DPOP_ALGS = " ".join(ALGORITHMS)


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


def _access_token(request: Request) -> tuple[str, str]:
    """(scheme, access token) of `Authorization: Bearer` (RFC 6750 §2.1) or `Authorization:
    DPoP` (RFC 9449 §7.1), the scheme lowercased. AdminError 401 when absent (or another
    scheme), 400 when malformed."""
    header = request.headers.get("authorization")
    scheme, _, credentials = (header or "").partition(" ")
    if not header or scheme.lower() not in ("bearer", "dpop"):
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
    return scheme.lower(), credentials


async def _check_dpop(
    request: Request, service: Any, scheme: str, token: str, claims: dict[str, Any]
) -> None:
    """RFC 9449 §7: a DPoP-bound token (`cnf.jkt`) only with `Authorization: DPoP` and a
    proof of its key for this request (`DPoPVerifier.check_presented`: `htm`, `htu`,
    `ath`, replay). A bearer token needs nothing more. AdminError 401 otherwise."""
    if scheme == "bearer" and "cnf" not in claims:
        return
    if scheme == "bearer":
        raise _unauthorized(
            "invalid_token",
            "this access token is bound to a DPoP key: send it as Authorization: DPoP with a "
            "DPoP proof (RFC 9449 section 7.1)",
        )
    url = service.issuer + request.url.path
    try:
        await service.dpop.check_presented(
            request.headers.getlist("dpop"),
            request.method,
            url,
            token,
            claims,
            request_context(request),
        )
    except DPoPError as exc:
        raise AdminError(
            401,
            exc.error,
            exc.description,
            headers={"WWW-Authenticate": f'DPoP error="{exc.error}", algs="{DPOP_ALGS}"'},
        ) from None


def _token_and_client(db: Session, jti: str) -> tuple[AccessTokenRecord | None, ClientView | None]:
    """The access token's row and its client's (None where there is none)."""
    row = get_access_token(db, jti)
    return row, get_client_view(db, row.client_id) if row is not None else None


async def authenticate(request: Request) -> Actor:
    """The admin behind a request (RFC 6750 §2.1, §3.1; issue #11 item 2). Raises
    AdminError 400/401/403 (module doc)."""
    service = request.app.state.oauth
    scheme, token = _access_token(request)
    claims = service.codec.decode(token)
    if claims is None:
        raise _unauthorized("invalid_token", "the access token is invalid or expired")
    await _check_dpop(request, service, scheme, token, claims)
    row, client = await service.bridge.read(lambda db: _token_and_client(db, claims["jti"]))
    if row is None or row.revoked_at is not None or row.expires_at <= datetime.now(UTC):
        raise _unauthorized("invalid_token", "the access token was revoked or has expired")
    if client is None:  # deleted (its tokens were revoked in the same transaction)
        raise _unauthorized("invalid_token", "the access token's client no longer exists")
    if ADMIN_SCOPE not in row.scope.split():
        raise AdminError(
            403,
            "insufficient_scope",
            "this endpoint requires scope 'admin'",
            headers={"WWW-Authenticate": _bearer_challenge("insufficient_scope")},
        )
    if service.settings.admin_require_person and client.person is None:
        raise AdminError(
            403,
            "person_required",
            "admin tokens must belong to a client registered to a person "
            "(OAUTH2_ADMIN_REQUIRE_PERSON); use a personal admin client",
        )
    context = request_context(request)
    return Actor(row.client_id, row.jti, context, person=client.person, bootstrap=client.bootstrap)


Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Operation:
    """What /admin/openapi.json says of an endpoint: its answer model (`admin.answers`)
    and success `status`, its body model (also what validates the body), the error
    statuses it may answer besides 401/403 (each with the shared Error answer), its query
    parameters (name → description) and tag."""

    answer: Any = None
    status: int = 200
    body: Any = None
    errors: tuple[int, ...] = ()
    query: Mapping[str, str] = field(default_factory=dict)
    tag: str = "admin"


def admin_endpoint(
    answer: Any = None,
    *,
    status: int = 200,
    body: Any = None,
    errors: tuple[int, ...] = (),
    query: Mapping[str, str] | None = None,
    tag: str = "admin",
) -> Callable[[Callable[..., Awaitable[Response]]], Endpoint]:
    """Wrap a handler `(request, actor)`, or `(request, actor, body)` when `body` names
    its model: authenticate, check path parameters, read and validate the body, and turn
    AdminError and the registry services' errors (`registry.errors`) into their JSON
    answer. The arguments document the operation (`Operation`) in /admin/openapi.json;
    `status` is also the status of the handler's successful (200) answer."""
    operation = Operation(answer, status, body, errors, query or {}, tag)

    def decorate(handler: Callable[..., Awaitable[Response]]) -> Endpoint:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            try:
                actor = await authenticate(request)
                note_client(request.state, actor.client_id)  # for the access line
                check_path_params(request)
                if body is None:
                    response = await handler(request, actor)
                else:
                    response = await handler(request, actor, await read_json(request, body))
            except (AdminError, RegistryError) as exc:
                return error_response(exc)
            if response.status_code == 200:
                response.status_code = status  # the success status, declared once (above)
            return response

        endpoint.operation = operation  # type: ignore[attr-defined]
        return endpoint

    return decorate


def reading(
    name: str, param: str, read: Callable[[Any, str], Any], answer: Any, doc: str, tag: str
) -> Endpoint:
    """The endpoint `name` (its operationId) for GET of one resource: `read(session, path
    parameter `param`)` through the Bridge, answered as JSON `answer` (a registry NotFound
    becomes 404 naming `param`). `doc` is its OpenAPI summary and description."""

    async def handler(request: Request, actor: Actor) -> Response:
        value = request.path_params[param]
        return json_response(await request.app.state.oauth.bridge.read(lambda s: read(s, value)))

    handler.__name__ = handler.__qualname__ = name
    handler.__doc__ = doc
    return admin_endpoint(answer, errors=(404,), tag=tag)(handler)


def listing(
    name: str,
    read_page: Callable[[Any, list[Any] | None, int], dict[str, Any]],
    item: Any,
    doc: str,
) -> Endpoint:
    """The endpoint `list_{name}` for GET /admin/{name}: a keyset-paged listing of `item`
    (`keyset_page`), documented by `doc` and tagged `name`."""

    async def handler(request: Request, actor: Actor) -> Response:
        return await keyset_page(request, name, read_page)

    handler.__name__ = handler.__qualname__ = f"list_{name}"
    handler.__doc__ = doc
    return admin_endpoint(Page[item], query=PAGE_QUERY, tag=name)(handler)


def check_path_params(request: Request) -> None:
    """Refuse a path parameter holding a control character (AdminError 400 naming it)."""
    for name, value in request.path_params.items():
        if isinstance(value, str) and INVALID_TEXT.search(value):
            raise bad_request(name, f"{name} must not contain control characters")


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
