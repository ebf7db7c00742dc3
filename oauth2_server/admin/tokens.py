"""Admin API: live tokens, and revocation of one token or everything a client, a user or
a branch holds, in one request that answers how many tokens it revoked.

Revocation is immediate: introspection (RFC 7662) reads the same rows, so every affected
token is `{"active": false}` from the commit on. Resource servers that only verify JWTs
locally keep accepting an access token until it expires (DESIGN.md "Scale").
"""

from __future__ import annotations

import functools
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from oauth2_server.admin import answers, models
from oauth2_server.admin.errors import bad_request, json_response
from oauth2_server.admin.http import (
    PAGE_QUERY,
    Actor,
    admin_endpoint,
    cursor_codec,
    decode_cursor,
    page_size,
    query_params,
)
from oauth2_server.audit.cursors import query_scope
from oauth2_server.registry import tokens as registry

endpoint = functools.partial(admin_endpoint, tag="tokens")

LIST_QUERY = {
    "client_id": "tokens of this client",
    "user": "tokens of this user (subject)",
    "branch_id": "tokens of the clients granted this branch",
    "kind": "access (default) or refresh",
    **PAGE_QUERY,
}


# -- HTTP -------------------------------------------------------------------------------


@endpoint(answers.Revoked, body=models.Revoke, errors=(400, 404))
async def revoke(request: Request, actor: Actor, body: dict[str, Any]) -> Response:
    """Revoke one token (`jti`), one grant (`family_id`), or every token of a client,
    a user or a branch: give exactly one field. Answers `{"revoked": n}`."""
    return json_response(
        await request.app.state.oauth.bridge.write(lambda s: registry.revoke(s, actor, body))
    )


@endpoint(answers.Page[answers.AccessToken | answers.RefreshToken], query=LIST_QUERY)
async def list_tokens(request: Request, actor: Actor) -> Response:
    """List live (unrevoked, unexpired) tokens, filtered by client, user or branch. Access
    tokens show their `jti`; refresh tokens only their grant (`family_id`)."""
    params = query_params(request, set(LIST_QUERY))
    criteria = {k: v[0] for k, v in params.items() if k in registry.CRITERIA}
    kind = (params.get("kind") or ["access"])[0]
    if kind not in ("access", "refresh"):
        raise bad_request("kind", "kind must be access or refresh")
    codec = cursor_codec(request)
    scope = query_scope("tokens", {"kind": kind, **criteria})
    after = decode_cursor(codec, (params.get("cursor") or [None])[0], scope)
    limit = page_size(params)
    page = await request.app.state.oauth.bridge.read(
        lambda s: registry.list_tokens(s, criteria, kind, after, limit)
    )
    position = page.pop("next_position")
    page["next_cursor"] = codec.encode(scope, position) if position else None
    return json_response(page)
