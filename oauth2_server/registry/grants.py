"""A user's grant to one client, withdrawn (issue #11 item 1, "consent revoked"), and who
and what a token revocation concerns, for its summary row: the one service the admin
API (`DELETE /admin/users/{subject}/grants/{client_id}`) and the command line
(`oauth2-server users revoke-grant SUBJECT CLIENT_ID`) both call.

Revoking a grant revokes every access and refresh token of user U issued to client C
(every refresh-token family, RFC 9700 §4.14.2; expired ones too, so nothing can be
revived), deletes U's unredeemed authorization codes for C, and forgets U's remembered
consent to C, so the next authorization request shows the consent page again. From the
commit on, introspection answers `{"active": false}` (RFC 7662 §2.2) and a refresh
`invalid_grant` (RFC 6749 §5.2). One `consent_revoked` row (subject U,
`details.target_client_id` C, the count) and one `token_revoked` row per token (its id)
are written in the same transaction, by the admin person or the CLI operator.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from oauth2_server.audit.log import record
from oauth2_server.db.models import AccessToken, RefreshToken
from oauth2_server.registry.actor import Actor
from oauth2_server.registry.errors import NotFound
from oauth2_server.registry.users import get_user_view
from oauth2_server.storage import users as user_storage
from oauth2_server.storage import utcnow
from oauth2_server.storage.clients import get_client_view
from oauth2_server.storage.revocation import TokenFilter, revoke_tokens
from oauth2_server.storage.tokens import RevokedToken, user_subjects

CONSENT_REVOKED = "consent_revoked"


def revoke_grant(session: Session, actor: Actor, subject: str, client_id: str) -> dict[str, Any]:
    """Withdraw user `subject`'s grant to client `client_id` (see the module docstring).
    Returns `{"subject", "client_id", "revoked": n, "codes_deleted": n,
    "consent_forgotten": bool}`. NotFound `subject` (no such user) or `client_id` (no
    such client); revoking a grant that holds no live token is not an error (`revoked`
    0), and is audited all the same."""
    user = get_user_view(session, subject)
    if get_client_view(session, client_id) is None:
        raise NotFound("client_id", f"client {client_id!r} not found")
    revoked = revoke_tokens(
        session, TokenFilter(client_ids=(client_id,), user_id=user.id), utcnow()
    )
    codes = user_storage.delete_pending_codes(session, user.id, client_id)
    forgotten = user_storage.forget_consent(session, user.id, client_id)
    details = {
        "target_client_id": client_id,
        "revoked": len(revoked),
        "codes_deleted": codes,
        "consent_forgotten": forgotten,
    }
    record(
        session,
        actor.event(CONSENT_REVOKED, subject=subject, details=details),
        *actor.revoked(revoked, revoked_by={"user": subject, "client_id": client_id}),
    )
    answer = {key: details[key] for key in ("revoked", "codes_deleted", "consent_forgotten")}
    return {"subject": subject, "client_id": client_id, **answer}


def _family_owner(session: Session, family_id: str) -> tuple[str | None, str | None]:
    """(user subject, client id) of one grant's stored tokens (a refresh token's user,
    else an access token's); (None, None) when nothing names a user."""
    refresh = session.execute(
        select(RefreshToken.user_id, RefreshToken.client_id)
        .where(RefreshToken.family_id == family_id, RefreshToken.user_id.is_not(None))
        .limit(1)
    ).first()
    if refresh is not None:
        return user_subjects(session, [refresh.user_id]).get(refresh.user_id), refresh.client_id
    return _access_owner(session, AccessToken.family_id == family_id)


def _access_owner(session: Session, condition: Any) -> tuple[str | None, str | None]:
    """(user subject, client id) of the first access token matching `condition`; the
    subject is None for a client_credentials token; (None, None) when none matches."""
    access = session.execute(
        select(AccessToken.subject, AccessToken.client_id, AccessToken.user_id)
        .where(condition)
        .limit(1)
    ).first()
    if access is None:
        return None, None
    return (access.subject if access.user_id is not None else None), access.client_id


def concerned(
    session: Session, by: str, value: str, revoked: list[RevokedToken]
) -> tuple[str | None, str | None]:
    """The user (subject) and the client one revocation by `by` = `value` concerns, for
    its `admin_tokens_revoked` row (`subject`, `details.target_client_id`), None where
    it concerns none or several:

    - `jti`, `family_id`: the grant's user (None for a client_credentials token) and
      client, read from the stored tokens (also when they were already revoked);
    - `user`: that user; the client when every token revoked was one client's;
    - `client_id`: that client; the user when every token revoked was one user's (a
      client-wide revocation of many users leaves `subject` empty: each token's
      `token_revoked` row names its user);
    - `branch_id`: the client or user when every token revoked was one's."""
    if by == "family_id":
        return _family_owner(session, value)
    if by == "jti":
        return _access_owner(session, AccessToken.jti == value)
    users = {t.subject for t in revoked if t.user_id is not None}
    clients = {t.client_id for t in revoked}
    subject = value if by == "user" else (users.pop() if len(users) == 1 else None)
    client = value if by == "client_id" else (clients.pop() if len(clients) == 1 else None)
    return subject, client
