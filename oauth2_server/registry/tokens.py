"""Live tokens, and revocation of one token or everything a client, a user or a branch
holds: the one service the admin API and the command line both call.

Revocation is immediate: introspection (RFC 7662) reads the same rows, so every affected
token is `{"active": false}` from the commit on (RFC 7009 §2.2 for the same effect from
the revocation endpoint). Each revocation writes an `admin_tokens_revoked` audit row in
its transaction.

A branch's tokens are those of the clients granted that branch explicitly (issue 3's
`oauth2_client_branches`; a grant of every branch, `*`, does not count, or revoking one
branch would cut off services of every branch): tokens carry no branch.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from oauth2_server.audit.log import record
from oauth2_server.db.models import AccessToken
from oauth2_server.registry.actor import Actor
from oauth2_server.registry.errors import FieldInvalid, NotFound, require
from oauth2_server.registry.grants import concerned
from oauth2_server.registry.paging import after_int, iso
from oauth2_server.registry.users import cut_off
from oauth2_server.storage import revocation, utcnow
from oauth2_server.storage import tokens as token_storage
from oauth2_server.storage.branches import clients_granted
from oauth2_server.storage.clients import get_client_view
from oauth2_server.storage.tokens import RevokedToken
from oauth2_server.storage.users import get_user_view

# What one revocation may name; exactly one per request.
REVOKE_BY = ("jti", "family_id", "client_id", "user", "branch_id")
CRITERIA = ("client_id", "user", "branch_id")


def clients_of_branch(session: Session, branch_id: str) -> tuple[str, ...]:
    """Client ids granted `branch_id` explicitly. NotFound (`branch_id`) when the branch
    is unknown."""
    granted = clients_granted(session, branch_id)
    return require(granted, "branch_id", f"branch {branch_id!r} not found")


def token_filter(session: Session, criteria: dict[str, str]) -> revocation.TokenFilter:
    """The TokenFilter for `client_id` / `user` / `branch_id` criteria (any combination
    narrows it). NotFound naming the criterion when its target is unknown."""
    client_ids: tuple[str, ...] | None = None
    user_id = None
    if "client_id" in criteria:
        client_ids = (criteria["client_id"],)
    if "user" in criteria:
        user = get_user_view(session, criteria["user"])
        if user is None:
            raise NotFound("user", f"user {criteria['user']!r} not found")
        user_id = user.id
    if "branch_id" in criteria:
        granted = clients_of_branch(session, criteria["branch_id"])
        client_ids = granted if client_ids is None else tuple(set(client_ids) & set(granted))
    return revocation.TokenFilter(client_ids=client_ids, user_id=user_id)


def _revoke_by(session: Session, by: str, value: str, now: datetime) -> list[RevokedToken]:
    if by == "jti":
        if token_storage.get_access_token(session, value) is None:
            raise NotFound("jti", f"no access token with jti {value!r}")
        return token_storage.revoke_where(session, AccessToken, now, AccessToken.jti == value)
    if by == "family_id":
        if not revocation.family_exists(session, value):
            raise NotFound("family_id", f"no token family {value!r}")
        return token_storage.revoke_family(session, value, now)
    if by == "client_id" and get_client_view(session, value) is None:
        # a deleted client's tokens are already revoked; an unknown id is a mistake
        raise NotFound("client_id", f"client {value!r} not found")
    if by == "user":
        user_id = token_filter(session, {by: value}).user_id
        assert user_id is not None
        return cut_off(session, user_id)
    return revocation.revoke_tokens(session, token_filter(session, {by: value}), now)


def revoke(session: Session, actor: Actor, body: dict[str, str]) -> dict[str, Any]:
    """Revoke by exactly one of REVOKE_BY's fields (a user's pending authorization codes
    go too). Writes the `admin_tokens_revoked` row (`subject` and
    `details.target_client_id`: the one user and client it concerns, `grants.concerned`;
    empty for a client's or branch's revocation of many users, whose tokens' users are on
    their rows) and one `token_revoked` row per token (`Actor.revoked`). Returns
    `{"revoked": n, "by": field, "value": value}`; FieldInvalid
    unless exactly one is given, NotFound when its target is unknown."""
    given = [name for name in REVOKE_BY if name in body]
    if len(given) != 1:
        field = given[1] if given else "body"
        raise FieldInvalid(field, f"give exactly one of {', '.join(REVOKE_BY)}")
    by = given[0]
    value = body[by]
    revoked = _revoke_by(session, by, value, utcnow())
    subject, client_id = concerned(session, by, value, revoked)
    details: dict[str, Any] = {"by": by, "value": value, "revoked": len(revoked)}
    if client_id is not None:
        details["target_client_id"] = client_id
    record(
        session,
        actor.event(
            "admin_tokens_revoked",
            subject=subject,
            branch_id=value if by == "branch_id" else None,
            token_id=value if by == "jti" else None,
            details=details,
        ),
        *actor.revoked(revoked, revoked_by={by: value}),
    )
    return {"revoked": len(revoked), "by": by, "value": value}


def _json(item: dict[str, Any], kind: str) -> dict[str, Any]:
    item = dict(item)
    item.pop("id", None)
    item["kind"] = kind
    for key in ("issued_at", "expires_at"):
        item[key] = iso(item[key])
    return item


def list_tokens(
    session: Session, criteria: dict[str, str], kind: str, after: list[Any] | None, limit: int
) -> dict[str, Any]:
    """A page of live tokens of one `kind` (`access` or `refresh`) matching `criteria`:
    `items` and `next_position` (None on the last page). NotFound as `token_filter`."""
    f = token_filter(session, criteria)
    now = utcnow()
    if kind == "refresh":
        rows = revocation.list_live_refresh_tokens(session, f, now, after_int(after), limit + 1)
        position = [rows[limit - 1]["id"]] if len(rows) > limit else None
        return {
            "items": [_json(row, "refresh_token") for row in rows[:limit]],
            "next_position": position,
        }
    key = None
    if after and len(after) == 2:
        key = (datetime.fromisoformat(after[0]), str(after[1]))
    rows = revocation.list_live_access_tokens(session, f, now, key, limit + 1)
    last = rows[limit - 1] if len(rows) > limit else None
    return {
        "items": [_json(row, "access_token") for row in rows[:limit]],
        "next_position": [last["issued_at"].isoformat(), last["jti"]] if last else None,
    }
