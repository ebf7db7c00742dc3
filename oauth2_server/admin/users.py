"""Admin API: users (resource owners who sign in on the login page).

Users are addressed by `subject` (the token `sub`, a UUID). Deactivating a user revokes
every token they hold and deletes their unredeemed authorization codes, in the
transaction that deactivates them; a deactivated user cannot sign in or refresh.
Passwords are hashed (argon2id) off the event loop and never returned.
"""

from __future__ import annotations

import asyncio
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
from oauth2_server.crypto.hashing import hash_secret
from oauth2_server.storage import user_registry as registry
from oauth2_server.storage import utcnow
from oauth2_server.storage.revocation import TokenFilter, revoke_tokens
from oauth2_server.storage.subjects import IDENTIFIER, SubjectTaken

MIN_PASSWORD = 8
_PASSWORD = Field("string", f"at least {MIN_PASSWORD} characters", max_length=1000)
CREATE = {
    "username": Field("string", "login name, unique (case-insensitive)", required=True),
    "password": Field("string", _PASSWORD.doc, required=True, max_length=1000),
    "active": Field("boolean", "default true"),
    "subject": Field(
        "string",
        "token `sub` to keep (A-Z a-z 0-9 . _ ~ -), never a client_id; a new UUID if omitted",
        max_length=64,
    ),
}
UPDATE = {
    "username": Field("string", "login name, unique (case-insensitive)"),
    "active": Field("boolean", "false deactivates the user and revokes their tokens"),
}
PASSWORD = {
    "password": Field("string", _PASSWORD.doc, required=True, max_length=1000),
    "revoke_tokens": Field("boolean", "also revoke every token of the user (default false)"),
}


def user_json(view: registry.UserView) -> dict[str, Any]:
    item = asdict(view)
    item.pop("id")
    item["created_at"] = iso(view.created_at)
    return item


def check_username(session: Session, username: str, except_subject: str | None = None) -> None:
    if not username.strip():
        raise bad_request("username", "username must not be empty")
    if registry.username_taken(session, username, except_subject):
        raise conflict("username", f"username {username!r} is taken")


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise bad_request("password", f"password must be at least {MIN_PASSWORD} characters")


def _require(session: Session, subject: str) -> registry.UserView:
    view = registry.get_user_view(session, subject)
    if view is None:
        raise not_found("subject", f"user {subject!r} not found")
    return view


def _cut_off(session: Session, user: registry.UserView) -> int:
    revoked = revoke_tokens(session, TokenFilter(user_id=user.id), utcnow())
    registry.delete_pending_codes(session, user.id)
    return revoked


def create_user_op(
    session: Session, actor: Actor, body: dict[str, Any], password_hash: str
) -> dict[str, Any]:
    """Create a user from a validated CREATE body. AdminError 409 `username` if taken,
    409 `subject` if the chosen subject is a user's subject or a client's client_id (one
    `sub` namespace, RFC 9700 §4.15), 400 `subject` if malformed."""
    check_username(session, body["username"])
    subject = body.get("subject")
    if subject is not None and not IDENTIFIER.fullmatch(subject):
        raise bad_request("subject", "subject may use only A-Z a-z 0-9 . _ ~ - (1-64)")
    try:
        view = registry.register_user(
            session, body["username"], password_hash, body.get("active", True), subject
        )
    except SubjectTaken as taken:
        raise conflict("subject", str(taken)) from None
    record(
        session,
        actor.event(
            "admin_user_created", subject=view.subject, details={"username": view.username}
        ),
    )
    return user_json(view)


def update_user_op(
    session: Session, actor: Actor, subject: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Rename or (de)activate a user; deactivation revokes their tokens."""
    current = _require(session, subject)
    if "username" in body:
        check_username(session, body["username"], subject)
    view = registry.update_user(session, subject, body)
    assert view is not None
    revoked = _cut_off(session, current) if body.get("active") is False else 0
    action = "admin_user_deactivated" if body.get("active") is False else "admin_user_updated"
    record(
        session, actor.event(action, subject=subject, details={"changes": body, "revoked": revoked})
    )
    return {**user_json(view), "revoked": revoked}


def set_password_op(
    session: Session, actor: Actor, subject: str, password_hash: str, revoke: bool
) -> dict[str, Any]:
    """Replace a user's password hash; optionally revoke every token they hold."""
    view = _require(session, subject)
    registry.set_password_hash(session, subject, password_hash)
    revoked = _cut_off(session, view) if revoke else 0
    record(
        session,
        actor.event("admin_user_password_set", subject=subject, details={"revoked": revoked}),
    )
    return {**user_json(view), "revoked": revoked}


def list_users_op(session: Session, after: list[Any] | None, limit: int) -> dict[str, Any]:
    after_id = after[0] if after and isinstance(after[0], int) else None
    rows = registry.list_users(session, after_id, limit + 1)
    return {
        "items": [user_json(view) for view in rows[:limit]],
        "next_position": [rows[limit - 1].id] if len(rows) > limit else None,
    }


def get_user_op(session: Session, subject: str) -> dict[str, Any]:
    return user_json(_require(session, subject))


# -- HTTP -------------------------------------------------------------------------------

_USER = {"$ref": "#/components/schemas/User"}


def _bridge(request: Request) -> Any:
    return request.app.state.oauth.bridge


@endpoint(body=CREATE, responses={201: _USER, 400: None, 409: None}, tag="users")
async def create_user(request: Request, actor: Actor) -> Response:
    """Create a user who can sign in with this username and password."""
    body = await read_json(request, CREATE)
    check_password(body["password"])
    hashed = await asyncio.to_thread(hash_secret, body["password"])
    result = await _bridge(request).write(lambda s: create_user_op(s, actor, body, hashed))
    return json_response(result, 201)


@endpoint(query=PAGE_QUERY, tag="users")
async def list_users(request: Request, actor: Actor) -> Response:
    """List users in creation order, a page at a time (`next_cursor`)."""
    return await keyset_page(request, "users", list_users_op)


@endpoint(responses={200: _USER, 404: None}, tag="users")
async def get_user(request: Request, actor: Actor) -> Response:
    """Read one user by subject (never the password hash)."""
    subject = request.path_params["subject"]
    return json_response(await _bridge(request).read(lambda s: get_user_op(s, subject)))


@endpoint(body=UPDATE, responses={200: _USER, 400: None, 404: None, 409: None}, tag="users")
async def update_user(request: Request, actor: Actor) -> Response:
    """Rename a user or set `active`; `active: false` revokes every token they hold."""
    body = await read_json(request, UPDATE)
    subject = request.path_params["subject"]
    return json_response(
        await _bridge(request).write(lambda s: update_user_op(s, actor, subject, body))
    )


@endpoint(responses={200: _USER, 404: None}, tag="users")
async def deactivate_user(request: Request, actor: Actor) -> Response:
    """Deactivate a user: they cannot sign in, and every token they hold is revoked at
    once (`revoked` says how many)."""
    subject = request.path_params["subject"]
    body = {"active": False}
    return json_response(
        await _bridge(request).write(lambda s: update_user_op(s, actor, subject, body))
    )


@endpoint(body=PASSWORD, responses={200: _USER, 400: None, 404: None}, tag="users")
async def set_password(request: Request, actor: Actor) -> Response:
    """Set a user's password (hashed with argon2id; never returned)."""
    body = await read_json(request, PASSWORD)
    check_password(body["password"])
    subject = request.path_params["subject"]
    hashed = await asyncio.to_thread(hash_secret, body["password"])
    revoke = body.get("revoke_tokens", False)
    result = await _bridge(request).write(
        lambda s: set_password_op(s, actor, subject, hashed, revoke)
    )
    return json_response(result)
