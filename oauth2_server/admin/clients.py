"""Admin API: clients (RFC 6749 §2; RFC 7591 metadata names).

The operations (`*_op`) take a sync Session and an `Actor`, make the change and write
its `admin_*` audit row in the same transaction; the HTTP handlers and the CLI both call
them. A client's secret is generated here, hashed off the event loop, and returned once
(creation, rotation); nothing else ever returns it or its hash. Every change drops the
client from this worker's `ClientCache`; every other worker and instance acts on it from
the moment the change commits (`storage.client_registry` bumps the row's version and
notifies them), as revocations do.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from oauth2_server.admin.http import (
    PAGE_QUERY,
    Actor,
    Field,
    bad_request,
    conflict,
    iso,
    json_response,
    keyset_page,
    not_found,
    read_json,
)
from oauth2_server.admin.http import admin_endpoint as endpoint
from oauth2_server.audit.log import record
from oauth2_server.crypto.hashing import hash_client_secret
from oauth2_server.storage import branch_registry, utcnow
from oauth2_server.storage import client_registry as registry
from oauth2_server.storage.clients import (
    AUTH_METHODS,
    GRANT_TYPES,
    ClientRegistrationError,
    new_client_id,
    validate_redirect_uri,
)
from oauth2_server.storage.revocation import TokenFilter, revoke_tokens
from oauth2_server.storage.subjects import IDENTIFIER, SubjectTaken

PUBLIC_METHOD = "none"  # noqa: S105 (an auth method name, RFC 7591 §2)
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5B\x5D-\x7E]+$")  # RFC 6749 §3.3

_NAME = Field("string", "display name, unique (case-insensitive)")
_GRANTS = Field("string[]", f"grant types: {', '.join(GRANT_TYPES)}", max_length=100)
_URIS = Field(
    "string[]",
    "exact redirect URIs, no fragment: https; http://127.0.0.1 or http://[::1] (any port "
    "at request time); or a private-use scheme like com.example.app:/cb (RFC 8252 §7)",
    max_length=2000,
    max_items=20,
)
_SCOPE = Field("string", "space-separated scopes the client may request", max_length=2000)
_BRANCHES = Field(
    "string[]", "branch ids the client may broker upstream tokens for (`*`: all)", max_length=100
)
CREATE = {
    "name": Field("string", _NAME.doc, required=True),
    "client_id": Field(
        "string",
        "id to use (A-Z a-z 0-9 . _ ~ -), never a user's subject; random if omitted",
        max_length=64,
    ),
    "grant_types": _GRANTS,
    "redirect_uris": _URIS,
    "scope": _SCOPE,
    "public": Field("boolean", "a public client (PKCE, no secret); default false"),
    "token_endpoint_auth_method": Field(
        "string", f"one of {', '.join(AUTH_METHODS)}; default by `public`", max_length=40
    ),
    "branches": _BRANCHES,
}
UPDATE = {
    "name": _NAME,
    "grant_types": _GRANTS,
    "redirect_uris": _URIS,
    "scope": _SCOPE,
    "active": Field("boolean", "false deactivates the client and revokes its tokens"),
    "branches": Field("string[]", _BRANCHES.doc + "; replaces the current list", max_length=100),
}


def client_json(view: registry.ClientView, branches: list[str]) -> dict[str, Any]:
    item = asdict(view)
    item["created_at"], item["updated_at"] = iso(view.created_at), iso(view.updated_at)
    item["branches"] = branches
    return item


def _with_branches(session: Session, view: registry.ClientView) -> dict[str, Any]:
    branches = branch_registry.branches_of_clients(session, [view.client_id])
    return client_json(view, branches[view.client_id])


def _set_branches(session: Session, client_id: str, branches: list[str]) -> None:
    unknown = branch_registry.unknown_branches(session, branches)
    if unknown:
        raise bad_request("branches", f"unknown branch {unknown[0]!r}")
    branch_registry.set_client_branches(session, client_id, branches)


def _normal_scope(scope: str) -> str:
    tokens = scope.split()
    for token in tokens:
        if not SCOPE_TOKEN.match(token):
            raise bad_request("scope", f"scope {token!r} has characters RFC 6749 §3.3 forbids")
    return " ".join(dict.fromkeys(tokens))


def check_metadata(merged: dict[str, Any], public: bool) -> None:
    """Validate a client's whole metadata after a create or an update; AdminError 400
    naming the field."""
    if not merged["name"].strip():
        raise bad_request("name", "name must not be empty")
    grants = merged["grant_types"]
    if not grants:
        raise bad_request("grant_types", "grant_types must not be empty")
    for grant in grants:
        if grant not in GRANT_TYPES:
            raise bad_request("grant_types", f"grant type {grant!r} is not supported")
    if public and "client_credentials" in grants:
        raise bad_request("grant_types", "public clients cannot use client_credentials")
    if "authorization_code" in grants and not merged["redirect_uris"]:
        raise bad_request("redirect_uris", "authorization_code clients need a redirect URI")
    for uri in merged["redirect_uris"]:
        try:
            validate_redirect_uri(uri)
        except ClientRegistrationError as exc:
            raise bad_request("redirect_uris", str(exc)) from None
    merged["scope"] = _normal_scope(merged["scope"])


def _method(body: dict[str, Any]) -> str:
    public = body.get("public", False)
    method = body.get("token_endpoint_auth_method") or ("none" if public else "client_secret_basic")
    if method not in AUTH_METHODS:
        raise bad_request("token_endpoint_auth_method", f"{method!r} is not supported")
    if public != (method == "none"):
        raise bad_request("token_endpoint_auth_method", "public clients (only) use 'none'")
    return method


def refuse_admin_lockout(
    session: Session, actor: Actor, client_id: str, removal: str, keeps_admin: bool = False
) -> None:
    """The one rule, for the admin API and the CLI alike, that keeps a way in: an admin
    client may not delete or deactivate itself, and the last active client with scope
    `admin` may not be deleted, deactivated or lose that scope.

    `removal` is what the change does to `client_id` ("delete", "deactivate" or
    "narrow" its scope); `keeps_admin` is True for a scope change that keeps `admin`.
    Call it before making the change, in its transaction: it locks the active admin
    clients' rows (PostgreSQL), so concurrent removals cannot both pass.
    Raises AdminError 409 (`conflict`, field `client_id`).
    """
    if removal in {"delete", "deactivate"} and actor.client_id == client_id:
        raise conflict(
            "client_id",
            f"an admin client cannot {removal} itself; use another admin client",
        )
    if keeps_admin:
        return
    admins = registry.lock_active_admin_clients(session)
    if admins == [client_id]:
        what = {"delete": "deleted", "deactivate": "deactivated"}.get(
            removal, f"lose scope {registry.ADMIN_SCOPE!r}"
        )
        raise conflict(
            "client_id",
            f"client {client_id!r} is the last active admin client and cannot be {what}; "
            "create another admin client first",
        )


def create_client_op(
    session: Session, actor: Actor, body: dict[str, Any], secret_hash: str | None
) -> dict[str, Any]:
    """Register a client from a validated CREATE body. `secret_hash` is the `sha256$` hash
    of the secret the caller will show once (None for public clients)."""
    method = _method(body)
    merged = {
        "name": body["name"],
        "grant_types": body.get("grant_types") or ["client_credentials"],
        "redirect_uris": body.get("redirect_uris") or [],
        "scope": body.get("scope") or "",
    }
    check_metadata(merged, method == "none")
    client_id = body.get("client_id") or new_client_id()
    if not IDENTIFIER.fullmatch(client_id):
        raise bad_request("client_id", "client_id may use only A-Z a-z 0-9 . _ ~ -")
    if registry.client_id_taken(session, client_id):
        raise conflict("client_id", f"client_id {client_id!r} is taken")
    if registry.client_name_taken(session, merged["name"]):
        raise conflict("name", f"a client named {merged['name']!r} exists")
    try:
        view = registry.register_client(
            session,
            client_id=client_id,
            token_endpoint_auth_method=method,
            secret_hash=None if method == PUBLIC_METHOD else secret_hash,
            **merged,
        )
    except SubjectTaken as taken:  # a user's subject (RFC 9700 §4.15)
        raise conflict("client_id", str(taken)) from None
    if body.get("branches"):
        _set_branches(session, client_id, body["branches"])
    details = {"target_client_id": client_id, **merged, "branches": body.get("branches", [])}
    record(session, actor.event("admin_client_created", details=details))
    return _with_branches(session, view)


def update_client_op(
    session: Session, actor: Actor, client_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Apply a validated UPDATE body. Deactivating revokes the client's tokens.
    AdminError 404 (`client_id`), 409 (`name`; `client_id` when it would lock admins
    out, `refuse_admin_lockout`), 400 naming the field."""
    current = registry.get_client_view(session, client_id)
    if current is None:
        raise not_found("client_id", f"client {client_id!r} not found")
    merged = {key: body.get(key, getattr(current, key)) for key in registry.UPDATABLE}
    check_metadata(merged, current.token_endpoint_auth_method == PUBLIC_METHOD)
    if "name" in body and registry.client_name_taken(session, body["name"], client_id):
        raise conflict("name", f"a client named {body['name']!r} exists")
    changes = {key: merged.get(key, body[key]) for key in body}
    if current.active and body.get("active") is False:
        refuse_admin_lockout(session, actor, client_id, "deactivate")
    elif "scope" in body and registry.ADMIN_SCOPE in current.scope.split():
        keeps = registry.ADMIN_SCOPE in merged["scope"].split()
        refuse_admin_lockout(session, actor, client_id, "narrow", keeps_admin=keeps)
    view = registry.update_client(session, client_id, changes)
    assert view is not None
    if "branches" in body:
        _set_branches(session, client_id, body["branches"])
    revoked = 0
    if body.get("active") is False:
        revoked = revoke_tokens(session, TokenFilter(client_ids=(client_id,)), utcnow())
    record(
        session,
        actor.event(
            "admin_client_updated",
            details={"target_client_id": client_id, "changes": changes, "revoked": revoked},
        ),
    )
    return {**_with_branches(session, view), "revoked": revoked}


def rotate_secret_op(
    session: Session, actor: Actor, client_id: str, secret_hash: str
) -> dict[str, Any]:
    """Replace a confidential client's secret hash; the old secret stops working."""
    current = registry.get_client_view(session, client_id)
    if current is None:
        raise not_found("client_id", f"client {client_id!r} not found")
    if current.token_endpoint_auth_method == PUBLIC_METHOD:
        raise bad_request("client_id", "a public client has no secret to rotate")
    registry.set_client_secret_hash(session, client_id, secret_hash)
    record(
        session, actor.event("admin_client_secret_rotated", details={"target_client_id": client_id})
    )
    return _with_branches(session, current)


def delete_client_op(session: Session, actor: Actor, client_id: str) -> dict[str, Any]:
    """Revoke every token of the client, then delete it (consents and pending codes go
    with it). AdminError 404 when unknown, 409 for the caller itself or the last admin
    client (`refuse_admin_lockout`)."""
    refuse_admin_lockout(session, actor, client_id, "delete")
    revoked = revoke_tokens(session, TokenFilter(client_ids=(client_id,)), utcnow())
    if not registry.delete_client(session, client_id):
        raise not_found("client_id", f"client {client_id!r} not found")
    record(
        session,
        actor.event(
            "admin_client_deleted", details={"target_client_id": client_id, "revoked": revoked}
        ),
    )
    return {"client_id": client_id, "deleted": True, "revoked": revoked}


def list_clients_op(session: Session, after: list[Any] | None, limit: int) -> dict[str, Any]:
    """A page of clients, registration order. `after`: decoded cursor position."""
    after_id = after[0] if after and isinstance(after[0], int) else None
    rows = registry.list_clients(session, after_id, limit + 1)
    branches = branch_registry.branches_of_clients(session, [v.client_id for _, v in rows[:limit]])
    return {
        "items": [client_json(view, branches[view.client_id]) for _, view in rows[:limit]],
        "next_position": [rows[limit - 1][0]] if len(rows) > limit else None,
    }


def get_client_op(session: Session, client_id: str) -> dict[str, Any]:
    view = registry.get_client_view(session, client_id)
    if view is None:
        raise not_found("client_id", f"client {client_id!r} not found")
    return _with_branches(session, view)


# -- HTTP -------------------------------------------------------------------------------

_CLIENT = {"$ref": "#/components/schemas/Client"}


async def new_secret_hash() -> tuple[str, str]:
    """A new client secret (256 bits) and its `sha256$` hash (microseconds)."""
    secret = secrets.token_urlsafe(32)
    return secret, hash_client_secret(secret)


def _service(request: Request) -> Any:
    return request.app.state.oauth


@endpoint(body=CREATE, responses={201: _CLIENT, 400: None, 409: None}, tag="clients")
async def create_client(request: Request, actor: Actor) -> Response:
    """Register a client; the answer carries `client_secret`, shown only this once."""
    body = await read_json(request, CREATE)
    secret, hashed = (None, None) if body.get("public") else await new_secret_hash()
    result = await _service(request).bridge.write(
        lambda s: create_client_op(s, actor, body, hashed)
    )
    if result["token_endpoint_auth_method"] != PUBLIC_METHOD:
        result["client_secret"] = secret
    return json_response(result, 201)


@endpoint(responses={200: _CLIENT, 404: None}, tag="clients")
async def get_client(request: Request, actor: Actor) -> Response:
    """Read one client (never its secret or hash)."""
    client_id = request.path_params["client_id"]
    return json_response(await _service(request).bridge.read(lambda s: get_client_op(s, client_id)))


@endpoint(body=UPDATE, responses={200: _CLIENT, 400: None, 404: None, 409: None}, tag="clients")
async def update_client(request: Request, actor: Actor) -> Response:
    """Change redirect URIs, scope, grant types, name or the active flag. Fields left
    out keep their value; `active: false` also revokes every token of the client."""
    body = await read_json(request, UPDATE)
    client_id = request.path_params["client_id"]
    service = _service(request)
    result = await service.bridge.write(lambda s: update_client_op(s, actor, client_id, body))
    service.clients.invalidate(client_id)
    return json_response(result)


@endpoint(responses={200: _CLIENT, 400: None, 404: None}, tag="clients")
async def rotate_secret(request: Request, actor: Actor) -> Response:
    """Give a confidential client a new secret, returned once; the old one stops working."""
    client_id = request.path_params["client_id"]
    secret, hashed = await new_secret_hash()
    service = _service(request)
    result = await service.bridge.write(lambda s: rotate_secret_op(s, actor, client_id, hashed))
    service.clients.invalidate(client_id)
    return json_response({**result, "client_secret": secret})


@endpoint(responses={200: None, 404: None}, tag="clients")
async def delete_client(request: Request, actor: Actor) -> Response:
    """Delete a client after revoking all its tokens; answers how many were revoked."""
    client_id = request.path_params["client_id"]
    service = _service(request)
    result = await service.bridge.write(lambda s: delete_client_op(s, actor, client_id))
    service.clients.invalidate(client_id)
    return json_response(result)


@endpoint(query=PAGE_QUERY, tag="clients")
async def list_clients(request: Request, actor: Actor) -> Response:
    """List clients in registration order, a page at a time (`next_cursor`)."""
    return await keyset_page(request, "clients", list_clients_op)
