"""Admin API: live tokens, and revocation of one token or everything a client, a user or
a branch holds, in one request that answers how many tokens it revoked.

Revocation is immediate: introspection (RFC 7662) reads the same rows, so every affected
token is `{"active": false}` from the commit on. Resource servers that only verify JWTs
locally keep accepting an access token until it expires (DESIGN.md "Scale").
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from oauth2_server.admin import branch_scope
from oauth2_server.admin.http import (
    PAGE_QUERY,
    Actor,
    Field,
    bad_request,
    cursor_codec,
    decode_cursor,
    iso,
    json_response,
    not_found,
    page_size,
    query_params,
    read_json,
)
from oauth2_server.admin.http import admin_endpoint as endpoint
from oauth2_server.audit.cursors import query_scope
from oauth2_server.audit.log import record
from oauth2_server.storage import revocation, utcnow
from oauth2_server.storage import tokens as token_storage
from oauth2_server.storage.client_registry import get_client_view
from oauth2_server.storage.user_registry import delete_pending_codes, get_user_view

REVOKE = {
    "jti": Field("string", "one access token, by its `jti` claim", max_length=64),
    "family_id": Field(
        "string", "one grant: every refresh and access token of the family", max_length=64
    ),
    "client_id": Field("string", "every token issued to this client", max_length=64),
    "user": Field("string", "every token of this user (subject)", max_length=64),
    "branch_id": Field("string", "every token of the clients granted this branch", max_length=100),
}
LIST_QUERY = {
    "client_id": "tokens of this client",
    "user": "tokens of this user (subject)",
    "branch_id": "tokens of the clients granted this branch",
    "kind": "access (default) or refresh",
    **PAGE_QUERY,
}


def token_filter(session: Session, criteria: dict[str, str]) -> revocation.TokenFilter:
    """The TokenFilter for `client_id` / `user` / `branch_id` criteria (any combination
    narrows it). AdminError 404 naming the criterion when its target is unknown."""
    client_ids: tuple[str, ...] | None = None
    user_id = None
    if "client_id" in criteria:
        client_ids = (criteria["client_id"],)
    if "user" in criteria:
        user = get_user_view(session, criteria["user"])
        if user is None:
            raise not_found("user", f"user {criteria['user']!r} not found")
        user_id = user.id
    if "branch_id" in criteria:
        granted = branch_scope.clients_of_branch(session, criteria["branch_id"])
        client_ids = granted if client_ids is None else tuple(set(client_ids) & set(granted))
    return revocation.TokenFilter(client_ids=client_ids, user_id=user_id)


def revoke_op(session: Session, actor: Actor, body: dict[str, str]) -> dict[str, Any]:
    """Revoke by exactly one of REVOKE's fields. Returns `{"revoked": n, "by": field,
    "value": value}`; AdminError 400 unless exactly one is given, 404 when unknown."""
    given = [name for name in REVOKE if name in body]
    if len(given) != 1:
        raise bad_request(given[1] if given else "body", f"give exactly one of {', '.join(REVOKE)}")
    by = given[0]
    value = body[by]
    now = utcnow()
    if by == "jti":
        token = token_storage.get_access_token(session, value)
        if token is None:
            raise not_found("jti", f"no access token with jti {value!r}")
        revoked = int(token_storage.revoke_access_token(session, value, now))
    elif by == "family_id":
        if not revocation.family_exists(session, value):
            raise not_found("family_id", f"no token family {value!r}")
        revoked = token_storage.revoke_family(session, value, now)
    else:
        if by == "client_id" and get_client_view(session, value) is None:
            # a deleted client's tokens are already revoked; an unknown id is a mistake
            raise not_found("client_id", f"client {value!r} not found")
        revoked = revocation.revoke_tokens(session, token_filter(session, {by: value}), now)
        if by == "user":
            user = get_user_view(session, value)
            assert user is not None
            delete_pending_codes(session, user.id)
    record(
        session,
        actor.event(
            "admin_tokens_revoked",
            subject=value if by == "user" else None,
            branch_id=value if by == "branch_id" else None,
            token_id=value if by == "jti" else None,
            details={"by": by, "value": value, "revoked": revoked},
        ),
    )
    return {"revoked": revoked, "by": by, "value": value}


def _json(item: dict[str, Any], kind: str) -> dict[str, Any]:
    item = dict(item)
    item.pop("id", None)
    item["kind"] = kind
    for key in ("issued_at", "expires_at"):
        item[key] = iso(item[key])
    return item


def list_tokens_op(
    session: Session, criteria: dict[str, str], kind: str, after: list[Any] | None, limit: int
) -> dict[str, Any]:
    """A page of live tokens of one kind matching `criteria`."""
    f = token_filter(session, criteria)
    now = utcnow()
    if kind == "refresh":
        after_id = after[0] if after and isinstance(after[0], int) else None
        rows = revocation.list_live_refresh_tokens(session, f, now, after_id, limit + 1)
        position = [rows[limit - 1]["id"]] if len(rows) > limit else None
        items = [_json(row, "refresh_token") for row in rows[:limit]]
    else:
        key = None
        if after and len(after) == 2:
            key = (datetime.fromisoformat(after[0]), str(after[1]))
        rows = revocation.list_live_access_tokens(session, f, now, key, limit + 1)
        last = rows[limit - 1] if len(rows) > limit else None
        position = [last["issued_at"].isoformat(), last["jti"]] if last else None
        items = [_json(row, "access_token") for row in rows[:limit]]
    return {"items": items, "next_position": position}


# -- HTTP -------------------------------------------------------------------------------


@endpoint(body=REVOKE, responses={200: None, 400: None, 404: None}, tag="tokens")
async def revoke(request: Request, actor: Actor) -> Response:
    """Revoke one token (`jti`), one grant (`family_id`), or every token of a client,
    a user or a branch: give exactly one field. Answers `{"revoked": n}`."""
    body = await read_json(request, REVOKE)
    return json_response(
        await request.app.state.oauth.bridge.write(lambda s: revoke_op(s, actor, body))
    )


@endpoint(query=LIST_QUERY, tag="tokens")
async def list_tokens(request: Request, actor: Actor) -> Response:
    """List live (unrevoked, unexpired) tokens, filtered by client, user or branch. Access
    tokens show their `jti`; refresh tokens only their grant (`family_id`)."""
    params = query_params(request, set(LIST_QUERY))
    criteria = {k: v[0] for k, v in params.items() if k in ("client_id", "user", "branch_id")}
    kind = (params.get("kind") or ["access"])[0]
    if kind not in ("access", "refresh"):
        raise bad_request("kind", "kind must be access or refresh")
    codec = cursor_codec(request)
    scope = query_scope("tokens", {"kind": kind, **criteria})
    after = decode_cursor(codec, (params.get("cursor") or [None])[0], scope)
    limit = page_size(params)
    page = await request.app.state.oauth.bridge.read(
        lambda s: list_tokens_op(s, criteria, kind, after, limit)
    )
    position = page.pop("next_position")
    page["next_cursor"] = codec.encode(scope, position) if position else None
    return json_response(page)
