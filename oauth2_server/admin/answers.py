"""The admin API's answers as pydantic models, for /admin/openapi.json.

The handlers send the registry services' dicts as they are; these models say what those
hold. An answer that shows a storage record (`storage.clients.ClientView`,
`storage.users.UserView`, `storage.branches.BranchRecord`,
`upstream.disconnect.DisconnectResult`) is derived from the record's fields (`answer`),
so a column added there is documented with no second declaration. Every model refuses
unknown fields: `tests/unit/test_admin_models.py` checks real answers against them, so an
answer cannot grow a field the document does not show.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, NotRequired, TypeVar, get_type_hints

from pydantic import Field, WithJsonSchema, with_config
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from oauth2_server.admin.models import STRICT
from oauth2_server.storage import branches as storage_branches
from oauth2_server.storage import clients as storage_clients
from oauth2_server.storage import users as storage_users
from oauth2_server.upstream.disconnect import DisconnectResult

T = TypeVar("T")
Timestamp = Annotated[
    str, WithJsonSchema({"type": "string", "format": "date-time", "description": "UTC, ISO 8601"})
]
Count = Annotated[int, Field(ge=0, description="how many tokens this change revoked")]


def answer(name: str, view: type, doc: str, drop: tuple[str, ...] = (), **more: Any) -> Any:
    """The answer model `name` of a storage record (a dataclass): its fields but `drop`,
    datetimes as `Timestamp`, then the fields `more` (name=type) the answer adds. A
    column added to the record shows in the document with no second declaration."""
    hints = get_type_hints(view)
    fields = {
        f.name: {datetime: Timestamp, datetime | None: Timestamp | None}.get(
            hints[f.name], hints[f.name]
        )
        for f in dataclasses.fields(view)
        if f.name not in drop
    }
    model: Any = TypedDict(name, {**fields, **more})  # type: ignore[operator]
    model.__doc__ = doc
    return with_config(STRICT)(model)


Client = answer(
    "Client",
    storage_clients.ClientView,
    "A client as admins see it: never its secret's hash.",
    branches=list[str],
)


@with_config(STRICT)
class ClientWithSecret(Client):
    """A client created or given a new secret: `client_secret` is shown this once (a
    public client has none)."""

    client_secret: NotRequired[Annotated[str, Field(description="shown only this once")]]


@with_config(STRICT)
class ClientUpdated(Client):
    """A changed client; `revoked` counts the tokens a deactivation revoked."""

    revoked: Count


@with_config(STRICT)
class ClientDeleted(TypedDict):
    """A deleted client and how many of its tokens were revoked."""

    client_id: str
    deleted: bool
    revoked: Count


User = answer(
    "User",
    storage_users.UserView,
    "A user as admins see it (never the password hash); `subject` is the token `sub`.",
    drop=("id",),
)


@with_config(STRICT)
class UserChanged(User):
    """A changed user; `revoked` counts the tokens the change revoked."""

    revoked: Count


@with_config(STRICT)
class Connection(TypedDict):
    """A branch's connection to a provider (never its tokens)."""

    provider: str
    account_email: str | None
    scope: str | None
    access_expires_at: Timestamp | None
    last_refreshed_at: Timestamp | None
    needs_consent: bool
    consent_error: str | None
    grant_shared_by: Annotated[int, Field(description="branches linked to the same grant")]
    refresh: Annotated[
        Literal["in_progress", "interrupted"] | None,
        Field(
            description="a refresh at the provider is in flight (in_progress), or its "
            "process stopped mid-call and the next refresh takes over (interrupted)"
        ),
    ]
    refresh_started_at: Timestamp | None
    last_refresh_error: Annotated[
        str | None, Field(description="why the last refresh failed (never a token)")
    ]
    last_refresh_error_at: Timestamp | None
    refresh_failures: Annotated[int, Field(description="failed refreshes in a row")]


Branch = answer(
    "Branch",
    storage_branches.BranchRecord,
    "A branch, the clients granted it and its provider connections.",
    clients=list[str],
    connections=list[Connection],
)


@with_config(STRICT)
class ConnectionStarted(TypedDict):
    """Where to send a browser signed in to the branch's account (valid once)."""

    branch_id: str
    provider: str
    authorization_url: str
    redirect_uri: str
    expires_at: Timestamp


Disconnected = answer(
    "Disconnected",
    DisconnectResult,
    "A disconnected branch; `revoked`: whether the provider revoked the grant (null: not "
    "attempted: the grant still serves other branches, or the provider has no revocation "
    "endpoint).",
    drop=("credential_id",),
)


@with_config(STRICT)
class Revoked(TypedDict):
    """How many tokens a revocation revoked, and by which field and value."""

    revoked: Count
    by: str
    value: str


@with_config(STRICT)
class GrantRevoked(TypedDict):
    """A user's grant to a client, withdrawn (`consent_revoked`): how many of its tokens
    were revoked, unredeemed codes deleted, and whether a remembered consent was
    forgotten (the consent page asks again)."""

    subject: str
    client_id: str
    revoked: Count
    codes_deleted: Count
    consent_forgotten: bool


@with_config(STRICT)
class AccessToken(TypedDict):
    """A live access token (RFC 9068 claims; never the JWT)."""

    kind: Literal["access_token"]
    jti: str
    client_id: str
    subject: str | None
    scope: str
    grant_type: str
    family_id: str | None
    issued_at: Timestamp
    expires_at: Timestamp


@with_config(STRICT)
class RefreshToken(TypedDict):
    """The live refresh token of a grant (never the token or its hash)."""

    kind: Literal["refresh_token"]
    family_id: str
    client_id: str
    subject: str | None
    scope: str
    issued_at: Timestamp
    expires_at: Timestamp


# -- audit trail, pages, errors --------------------------------------------------------


@with_config(STRICT)
class AuditRow(TypedDict):
    """An `oauth2_token_logs` row (DESIGN.md; `audit.rows.EXPORT_FIELDS` without
    `row_hash`)."""

    id: int
    created_at: Timestamp
    action: str
    client_id: str | None
    subject: str | None
    branch_id: str | None
    grant_type: str | None
    token_id: str | None
    family_id: str | None
    ip: str | None
    user_agent: str | None
    request_id: str | None
    risk_score: Annotated[float, Field(ge=0, le=1)]
    flags: list[str]
    details: dict[str, Any]
    seal_seq: int | None


@with_config(STRICT)
class AuditSummary(TypedDict):
    """Counts of the audit rows matching the filters, grouped by `group_by`: the largest
    groups first (at most 1,000; `truncated` when more exist). Each group holds its
    grouped columns' values and `count`; `total` counts every matching row."""

    group_by: list[str]
    groups: list[dict[str, Any]]
    total: Annotated[int, Field(ge=0)]
    truncated: bool


@with_config(STRICT)
class Page(TypedDict, Generic[T]):
    """One page of a listing; `next_cursor` fetches the next (null on the last page)."""

    items: list[T]
    next_cursor: str | None


@with_config(STRICT)
class AuditPage(TypedDict):
    """One page of audit rows: by `cursor` (`next_cursor` fetches the next, null on the
    last page), or by watermark (`after` given: rows in `seal_seq` order, `next_after`
    the watermark to ask with next; `next_cursor` null)."""

    items: list[AuditRow]
    next_cursor: str | None
    after: NotRequired[Annotated[int, Field(ge=0)]]
    next_after: NotRequired[Annotated[int, Field(ge=0)]]


@with_config(STRICT)
class Error(TypedDict):
    """Every admin error: nothing was changed."""

    error: str
    error_description: str
    field: NotRequired[Annotated[str, Field(description="the body field or parameter at fault")]]
