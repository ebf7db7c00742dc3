"""Users (resource owners who sign in on the login page): the one service that validates
and changes them, for the admin API and the command line alike.

Users are addressed by `subject` (the token `sub`, a UUID unless chosen). Usernames are
unique ignoring case (`Alice` and `alice` are one name). Deactivating a user revokes every
token they hold and deletes their unredeemed authorization codes, in the transaction that
deactivates them. Passwords arrive hashed (argon2id, off the event loop in the caller,
after `check_password`) and are never returned. Each change writes its `admin_user_*`
audit row in its transaction.

Raises `registry.errors` FieldInvalid (400), NotFound (404) or Conflict (409).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy.orm import Session

from oauth2_server.audit.log import record
from oauth2_server.registry.actor import Actor, before
from oauth2_server.registry.errors import Conflict, FieldInvalid, require
from oauth2_server.registry.paging import after_int, iso
from oauth2_server.storage import users as storage
from oauth2_server.storage import utcnow
from oauth2_server.storage.revocation import TokenFilter, revoke_tokens
from oauth2_server.storage.subjects import IDENTIFIER, SubjectTaken
from oauth2_server.storage.tokens import RevokedToken

MIN_PASSWORD = 8


def user_json(view: storage.UserView) -> dict[str, Any]:
    """A user as admins see it: subject, username, active, created_at (ISO 8601 UTC)."""
    item = asdict(view)
    item.pop("id")
    item["created_at"] = iso(view.created_at)
    return item


def check_username(session: Session, username: str, except_subject: str | None = None) -> None:
    """FieldInvalid when empty; Conflict when another user has it (case-insensitive)."""
    if not username.strip():
        raise FieldInvalid("username", "username must not be empty")
    if storage.username_taken(session, username, except_subject):
        raise Conflict("username", f"username {username!r} is taken")


def check_password(password: str) -> None:
    """FieldInvalid (`password`) unless it has at least MIN_PASSWORD characters. Call it
    before hashing."""
    if len(password) < MIN_PASSWORD:
        raise FieldInvalid("password", f"password must be at least {MIN_PASSWORD} characters")


def get_user_view(session: Session, subject: str) -> storage.UserView:
    """The user with this subject. NotFound (`subject`)."""
    view = storage.get_user_view(session, subject)
    return require(view, "subject", f"user {subject!r} not found")


def cut_off(session: Session, user_id: int) -> list[RevokedToken]:
    """Revoke every token of the user and delete their pending authorization codes;
    the tokens revoked."""
    revoked = revoke_tokens(session, TokenFilter(user_id=user_id), utcnow())
    storage.delete_pending_codes(session, user_id)
    return revoked


def create_user(
    session: Session, actor: Actor, body: dict[str, Any], password_hash: str
) -> dict[str, Any]:
    """Create a user from `body` (`username`, optional `active`, `subject`) with a
    password already checked and hashed. Conflict `username` if taken (ignoring case),
    Conflict `subject` if the chosen subject is a user's subject or a client's client_id
    (one `sub` namespace, RFC 9700 §4.15), FieldInvalid `subject` if malformed."""
    check_username(session, body["username"])
    subject = body.get("subject")
    if subject is not None and not IDENTIFIER.fullmatch(subject):
        raise FieldInvalid("subject", "subject may use only A-Z a-z 0-9 . _ ~ - (1-64)")
    try:
        created = storage.insert_user(
            session,
            body["username"],
            password_hash,
            active=body.get("active", True),
            subject=subject,
        )
    except SubjectTaken as taken:
        raise Conflict("subject", str(taken)) from None
    details = {"username": created.username}
    record(session, actor.event("admin_user_created", subject=created.subject, details=details))
    return user_json(get_user_view(session, created.subject))


def update_user(
    session: Session, actor: Actor, subject: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Rename (`username`) or (de)activate (`active`) a user; deactivation revokes their
    tokens (`revoked` in the answer). NotFound, Conflict/FieldInvalid `username`."""
    current = get_user_view(session, subject)
    if "username" in body:
        check_username(session, body["username"], subject)
    view = storage.update_user(session, subject, body)
    assert view is not None
    deactivated = body.get("active") is False
    revoked = cut_off(session, current.id) if deactivated else []
    action = "admin_user_deactivated" if deactivated else "admin_user_updated"
    details = {"changes": body, "before": before(current, body), "revoked": len(revoked)}
    record(
        session,
        actor.event(action, subject=subject, details=details),
        *actor.revoked(revoked, revoked_by={"user": subject}),
    )
    return {**user_json(view), "revoked": len(revoked)}


def set_password(
    session: Session, actor: Actor, subject: str, password_hash: str, revoke: bool
) -> dict[str, Any]:
    """Replace a user's password hash (checked and hashed by the caller); `revoke` also
    revokes every token they hold. NotFound (`subject`)."""
    view = get_user_view(session, subject)
    storage.update_user(session, subject, {"password_hash": password_hash})
    revoked = cut_off(session, view.id) if revoke else []
    details = {"revoked": len(revoked)}
    record(
        session,
        actor.event("admin_user_password_set", subject=subject, details=details),
        *actor.revoked(revoked, revoked_by={"user": subject}),
    )
    return {**user_json(view), "revoked": len(revoked)}


def list_users(session: Session, after: list[Any] | None, limit: int) -> dict[str, Any]:
    """A page of users, creation order: `items` and `next_position` (None on the last)."""
    rows = storage.list_users(session, after_int(after), limit + 1)
    return {
        "items": [user_json(view) for view in rows[:limit]],
        "next_position": [rows[limit - 1].id] if len(rows) > limit else None,
    }


def get_user(session: Session, subject: str) -> dict[str, Any]:
    """One user's JSON (never the password hash). NotFound (`subject`)."""
    return user_json(get_user_view(session, subject))
