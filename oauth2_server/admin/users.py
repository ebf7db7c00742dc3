"""Admin API: users (resource owners who sign in on the login page), over HTTP.

The rules and the changes are `registry.users`, which the CLI calls too. Users are
addressed by `subject` (the token `sub`). Passwords are checked, then hashed (argon2id)
off the event loop here, and never returned.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from oauth2_server.admin import answers, models
from oauth2_server.admin.errors import json_response
from oauth2_server.admin.http import Actor, admin_endpoint, listing, reading
from oauth2_server.crypto.hashing import hash_secret
from oauth2_server.registry import grants
from oauth2_server.registry import users as registry

endpoint = functools.partial(admin_endpoint, tag="users")


def _bridge(request: Request) -> Any:
    return request.app.state.oauth.bridge


async def _password_hash(body: dict[str, Any]) -> str:
    """The argon2id hash of the body's checked `password`, computed off the event loop."""
    registry.check_password(body["password"])
    return await asyncio.to_thread(hash_secret, body["password"])


@endpoint(answers.User, status=201, body=models.UserCreate, errors=(400, 409))
async def create_user(request: Request, actor: Actor, body: dict[str, Any]) -> Response:
    """Create a user who can sign in with this username and password."""
    hashed = await _password_hash(body)
    result = await _bridge(request).write(lambda s: registry.create_user(s, actor, body, hashed))
    return json_response(result)


list_users = listing(
    "users",
    registry.list_users,
    answers.User,
    "List users in creation order, a page at a time (`next_cursor`).",
)
get_user = reading(
    "get_user",
    "subject",
    registry.get_user,
    answers.User,
    "Read one user by subject (never the password hash).",
    tag="users",
)


async def _update(request: Request, actor: Actor, body: dict[str, Any]) -> Response:
    subject = request.path_params["subject"]
    result = await _bridge(request).write(lambda s: registry.update_user(s, actor, subject, body))
    return json_response(result)


@endpoint(answers.UserChanged, body=models.UserUpdate, errors=(400, 404, 409))
async def update_user(request: Request, actor: Actor, body: dict[str, Any]) -> Response:
    """Rename a user or set `active`; `active: false` revokes every token they hold."""
    return await _update(request, actor, body)


@endpoint(answers.UserChanged, errors=(404,))
async def deactivate_user(request: Request, actor: Actor) -> Response:
    """Deactivate a user: they cannot sign in, and every token they hold is revoked at
    once (`revoked` says how many)."""
    return await _update(request, actor, {"active": False})


@endpoint(answers.UserChanged, body=models.PasswordSet, errors=(400, 404))
async def set_password(request: Request, actor: Actor, body: dict[str, Any]) -> Response:
    """Set a user's password (hashed with argon2id; never returned)."""
    hashed = await _password_hash(body)
    subject = request.path_params["subject"]
    revoke = body.get("revoke_tokens", False)
    result = await _bridge(request).write(
        lambda s: registry.set_password(s, actor, subject, hashed, revoke)
    )
    return json_response(result)


@endpoint(answers.GrantRevoked, errors=(404,))
async def revoke_grant(request: Request, actor: Actor) -> Response:
    """Withdraw a user's grant to a client (consent revoked): every access and refresh
    token of the user issued to the client is revoked at once, unredeemed codes are
    deleted and the remembered consent forgotten. Audited as `consent_revoked`."""
    subject = request.path_params["subject"]
    client_id = request.path_params["client_id"]
    result = await _bridge(request).write(
        lambda s: grants.revoke_grant(s, actor, subject, client_id)
    )
    return json_response(result)
