"""One `sub` namespace for clients and users (RFC 9700 §4.15).

An access token's `sub` is the user's `subject` (authorization code, refresh) or the
client's `client_id` (client_credentials, RFC 9068 §2.2). A client whose `client_id`
equals a user's `subject` would get tokens a resource server cannot tell from that
user's, so the two sets never meet: `claim_subject` is the one rule, called by every
registration of a client (`storage.clients.create_client`) and of a user
(`storage.users.insert_user`) in the transaction that inserts the row; the services
`registry.clients` and `registry.users` turn its SubjectTaken into a 409 naming the field.
Comparison ignores ASCII case, so a resource server that folds case cannot be confused
either (client ids and subjects are ASCII).

Race: `claim_subject` first takes the namespace lock, so two registrations (a client
and a user, or two of either) run their check-and-insert one after the other:
PostgreSQL `pg_advisory_xact_lock` (released at commit or rollback); SQLite, whose
driver reads outside a write transaction, takes the database's write lock with a no-op
UPDATE (a concurrent registration waits up to the busy timeout). Registrations are rare
admin actions, so one lock for the whole namespace costs nothing that matters. Rows
written before this rule existed are not re-checked.
"""

from __future__ import annotations

import re

from sqlalchemy import false, func, select, text, update
from sqlalchemy.orm import Session

from oauth2_server.db.models import Client, User

# A client_id or user subject an admin picks: RFC 3986 unreserved characters, 1-64 long
# (the columns' length), so it is safe in URLs, on command lines and in a JWT `sub`.
IDENTIFIER = re.compile(r"[A-Za-z0-9._~-]{1,64}")

# pg_advisory_xact_lock key of the namespace: "oauth2 sub" as an int64.
NAMESPACE_LOCK = 0x6F61757468325F73


class SubjectTaken(ValueError):
    """The identifier is already a client's `client_id` or a user's `subject`
    (`kind`: "client" or "user"); the message says which and why it matters."""

    def __init__(self, identifier: str, kind: str) -> None:
        other = "a client's client_id" if kind == "client" else "a user's subject"
        super().__init__(
            f"{identifier!r} is already {other}; clients and users share one token `sub` "
            "namespace (RFC 9700 section 4.15), so one may not take the other's identifier"
        )
        self.identifier = identifier
        self.kind = kind


def lock_namespace(session: Session) -> None:
    """Serialise registrations until this transaction ends (see the module docstring)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": NAMESPACE_LOCK})
    else:
        session.execute(update(User).where(false()).values(active=User.active))


def subject_owner(session: Session, identifier: str) -> str | None:
    """`client` if `identifier` is a client_id, `user` if it is a user's subject (ASCII
    case ignored), else None."""
    folded = identifier.lower()
    if session.scalars(
        select(Client.id).where(func.lower(Client.client_id) == folded).limit(1)
    ).first():
        return "client"
    if session.scalars(select(User.id).where(func.lower(User.subject) == folded).limit(1)).first():
        return "user"
    return None


def claim_subject(session: Session, identifier: str) -> None:
    """Take the namespace lock and make sure no client or user has `identifier` yet (the
    caller inserts its row in the same transaction). Raises SubjectTaken."""
    lock_namespace(session)
    owner = subject_owner(session, identifier)
    if owner is not None:
        raise SubjectTaken(identifier, owner)
