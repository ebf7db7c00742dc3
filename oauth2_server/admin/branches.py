"""Admin API: branches (issue 3's `oauth2_branches`) and their upstream connections.

Connecting answers with the provider's authorization URL (single-use `state`, PKCE S256,
offline access; DESIGN.md "Upstream brokering" 1): an admin opens it in a browser signed
in to the branch's Google account, and `/upstream/{provider}/callback` finishes.
Disconnecting unlinks the branch and revokes the grant at the provider when it was the
grant's last branch (`upstream.service`). Which clients may broker a branch's tokens is
set on the client (`PATCH /admin/clients/{id}` with `branches`).
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from pydantic import Field, with_config
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from typing_extensions import TypedDict

from oauth2_server.admin import answers, models
from oauth2_server.admin.answers import Timestamp
from oauth2_server.admin.errors import AdminError, bad_request, json_response, not_found
from oauth2_server.admin.http import Actor, admin_endpoint, listing, query_params, reading
from oauth2_server.admin.models import STRICT
from oauth2_server.audit.log import AuditEvent, record
from oauth2_server.registry import branches as registry
from oauth2_server.registry.paging import iso
from oauth2_server.upstream import health
from oauth2_server.upstream.connect import ConnectError, ConnectionStart, begin_connection
from oauth2_server.upstream.disconnect import DisconnectResult
from oauth2_server.upstream.providers import ProviderNotConfigured, UnknownProvider, provider_names

endpoint = functools.partial(admin_endpoint, tag="branches")


def _upstream_error(exc: Exception, field: str = "provider") -> AdminError:
    if isinstance(exc, ConnectError):
        if exc.status == 404:
            return not_found("branch_id", str(exc))
        return AdminError(exc.status if exc.status < 500 else 502, exc.error, str(exc), field)
    if isinstance(exc, UnknownProvider):
        return bad_request(field, str(exc))
    return AdminError(409, "provider_not_configured", str(exc), field)


# -- HTTP -------------------------------------------------------------------------------


def _service(request: Request) -> Any:
    return request.app.state.oauth


@endpoint(answers.Branch, status=201, body=models.BranchCreate, errors=(400, 409))
async def create_branch(request: Request, actor: Actor, body: dict[str, Any]) -> Response:
    """Create a branch (a location) that clients can be granted and that can be
    connected to an upstream provider."""
    bridge = _service(request).bridge
    return json_response(await bridge.write(lambda s: registry.create_branch(s, actor, body)))


list_branches = listing(
    "branches",
    registry.list_branches,
    answers.Branch,
    "List branches by id with their granted clients and connections, a page at a time.",
)
get_branch = reading(
    "get_branch",
    "branch_id",
    registry.get_branch,
    answers.Branch,
    "Read one branch: its fields, granted clients and connection status (never tokens).",
    tag="branches",
)


@endpoint(answers.Branch, body=models.BranchUpdate, errors=(400, 404))
async def update_branch(request: Request, actor: Actor, body: dict[str, Any]) -> Response:
    """Change a branch's name, contact, Google ids or active flag (fields left out keep
    their value)."""
    branch_id = request.path_params["branch_id"]
    bridge = _service(request).bridge
    return json_response(
        await bridge.write(lambda s: registry.update_branch(s, actor, branch_id, body))
    )


@endpoint(answers.ConnectionStarted, body=models.Connect, errors=(400, 404, 409))
async def connect(request: Request, actor: Actor, body: dict[str, Any]) -> Response:
    """Start connecting the branch to a provider: answers `authorization_url` (valid once,
    until `expires_at`) to open in a browser signed in to the branch's account."""
    branch_id = request.path_params["branch_id"]
    service = _service(request)
    try:
        provider = service.upstream.provider(body["provider"])
    except (UnknownProvider, ProviderNotConfigured) as exc:
        raise _upstream_error(exc) from None
    settings = service.settings

    def start_connection(session: Session) -> ConnectionStart:
        try:
            start = begin_connection(
                session,
                service.keys.keyring,
                provider,
                branch_id,
                issuer_url=settings.issuer_url,
                state_ttl=settings.upstream_state_ttl,
            )
        except ConnectError as exc:
            raise _upstream_error(exc) from None
        record(
            session,
            actor.event("admin_branch_connect_started", branch_id=branch_id, details=body),
        )
        return start

    start = await service.bridge.write(start_connection)
    return json_response(
        {
            "branch_id": start.branch_id,
            "provider": start.provider,
            "authorization_url": start.authorization_url,
            "redirect_uri": start.redirect_uri,
            "expires_at": iso(start.expires_at),
        }
    )


@endpoint(answers.Disconnected, body=models.Disconnect, errors=(400, 404, 409))
async def disconnect(request: Request, actor: Actor, body: dict[str, Any]) -> Response:
    """Disconnect the branch from a provider; the grant is revoked at the provider when
    no other branch uses it (`force` deletes the stored tokens even if that fails).

    The unlink, its `upstream_unlinked` row and the `admin_branch_disconnected` row naming
    the admin commit in one transaction."""
    branch_id = request.path_params["branch_id"]
    service = _service(request)

    def audit(result: DisconnectResult) -> AuditEvent:
        return actor.event(
            "admin_branch_disconnected", branch_id=branch_id, details=result.summary()
        )

    try:
        result = await service.upstream.disconnect(
            branch_id, body["provider"], force=body.get("force", False), audit=audit
        )
    except (ConnectError, UnknownProvider, ProviderNotConfigured) as exc:
        raise _upstream_error(exc) from None
    return json_response(result.summary())


# -- upstream grant health (issue #14 item 2) -------------------------------------------


@with_config(STRICT)
class RefreshFailing(TypedDict):
    """Why a grant's refreshes fail (never a token)."""

    since: Annotated[Timestamp | None, Field(description="first failure of this run")]
    attempts: Annotated[int, Field(ge=1, description="failed refreshes in a row")]
    error_class: Annotated[
        str | None,
        Field(description="upstream_unavailable, provider_refused or misconfigured"),
    ]
    last_error_at: Timestamp | None


@with_config(STRICT)
class GrantHealth(TypedDict):
    """An upstream grant, the branches linked to it and its health."""

    credential_id: str
    provider: str
    account_email: str | None
    branches: list[str]
    consent_error: str | None
    refresh_in_progress: bool
    state: Literal["ok", "refresh_failing", "needs_consent"]
    refresh_failing: RefreshFailing | None
    last_refreshed_at: Timestamp | None
    next_refresh_at: Annotated[
        Timestamp | None,
        Field(description="when the refresh worker next refreshes it (None: needs consent)"),
    ]
    access_expires_at: Timestamp | None


@with_config(STRICT)
class GrantList(TypedDict):
    """Every upstream grant (at most 1,000) with its health, and the count per state."""

    grants: list[GrantHealth]
    counts: dict[str, int]
    truncated: bool


@endpoint(GrantList, query={"provider": "only this provider's grants"}, errors=(400,))
async def list_grants(request: Request, actor: Actor) -> Response:
    """Upstream grants with their health: `ok`, `refresh_failing` (since, attempts, last
    error class) or `needs_consent`, with the last and next refresh time (the service of
    `oauth2-server branches grants`)."""
    provider = (query_params(request, {"provider"}).get("provider") or [None])[0]
    if provider is not None and provider not in provider_names():
        raise bad_request("provider", f"provider must be one of {', '.join(provider_names())}")
    service = _service(request)
    ahead = service.settings.upstream_refresh_ahead
    listed = await service.bridge.read(lambda s: health.list_grants(s, ahead, provider))
    return json_response(listed)
