"""Admin API: branches (issue 3's `oauth2_branches`) and their upstream connections.

Connecting answers with the provider's authorization URL (single-use `state`, PKCE S256,
offline access; DESIGN.md "Upstream brokering" 1): an admin opens it in a browser signed
in to the branch's Google account, and `/upstream/{provider}/callback` finishes.
Disconnecting unlinks the branch and revokes the grant at the provider when it was the
grant's last branch (`upstream.service`). Which clients may broker a branch's tokens is
set on the client (`PATCH /admin/clients/{id}` with `branches`).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from oauth2_server.admin.http import (
    PAGE_QUERY,
    Actor,
    AdminError,
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
from oauth2_server.audit.log import AuditEvent, record
from oauth2_server.storage import branch_registry as registry
from oauth2_server.storage import branches as branch_storage
from oauth2_server.storage import upstream as upstream_storage
from oauth2_server.upstream.connect import ConnectError, ConnectionStart, begin_connection
from oauth2_server.upstream.linking import DisconnectResult
from oauth2_server.upstream.providers import ProviderNotConfigured, UnknownProvider

_TEXT = {
    "name": Field("string", "display name"),
    "contact_email": Field("string", "contact email address", max_length=320),
    "google_account_id": Field("string", "Google Business Profile account id", max_length=100),
    "google_location_id": Field("string", "Google Business Profile location id", max_length=100),
}
CREATE = {
    "branch_id": Field(
        "string", "external id: letters, digits, ._:- (1–100)", required=True, max_length=100
    ),
    **_TEXT,
    "name": Field("string", "display name", required=True),
}
UPDATE = {**_TEXT, "active": Field("boolean", "false: token exchange refuses the branch")}
PROVIDER = {
    "provider": Field("string", "upstream provider, e.g. google", required=True, max_length=40)
}
DISCONNECT = {
    **PROVIDER,
    "force": Field("boolean", "delete the stored tokens even if the provider cannot revoke them"),
}


def _check_fields(body: dict[str, Any]) -> None:
    if "name" in body and not body["name"].strip():
        raise bad_request("name", "name must not be empty")
    email = body.get("contact_email")
    if email is not None and email and "@" not in email:
        raise bad_request("contact_email", f"contact_email {email!r} is not an email address")


def branch_json(session: Session, record_: branch_storage.BranchRecord) -> dict[str, Any]:
    """A branch with the clients granted it and its provider connections (no tokens)."""
    item = asdict(record_)
    item["created_at"], item["updated_at"] = iso(record_.created_at), iso(record_.updated_at)
    item["clients"] = list(branch_storage.clients_granted(session, record_.branch_id) or ())
    item["connections"] = [
        {
            "provider": s.provider,
            "account_email": s.account_email,
            "scope": s.scope,
            "access_expires_at": iso(s.access_expires_at),
            "last_refreshed_at": iso(s.last_refreshed_at),
            "needs_consent": s.needs_consent,
            "consent_error": s.consent_error,
            "grant_shared_by": s.branches_sharing,
        }
        for s in upstream_storage.connection_status(session, record_.branch_id)
        if s.provider is not None
    ]
    return item


def _require(session: Session, branch_id: str) -> branch_storage.BranchRecord:
    found = branch_storage.get_branch(session, branch_id)
    if found is None:
        raise not_found("branch_id", f"branch {branch_id!r} not found")
    return found


def create_branch_op(session: Session, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
    """Create a branch from a validated CREATE body; 409 `branch_id` if it exists."""
    _check_fields(body)
    try:
        branch_storage.validate_branch_id(body["branch_id"])
    except branch_storage.BranchError as exc:
        raise bad_request("branch_id", str(exc)) from None
    if branch_storage.get_branch(session, body["branch_id"]) is not None:
        raise conflict("branch_id", f"branch {body['branch_id']!r} already exists")
    created = branch_storage.create_branch(session, **body)
    record(session, actor.event("admin_branch_created", branch_id=created.branch_id, details=body))
    return branch_json(session, created)


def update_branch_op(
    session: Session, actor: Actor, branch_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Apply a validated UPDATE body; 404 `branch_id` when unknown."""
    _require(session, branch_id)
    _check_fields(body)
    changes = {
        k: (v.strip() or None) if isinstance(v, str) and k != "name" else v for k, v in body.items()
    }
    updated = registry.update_branch(session, branch_id, changes)
    assert updated is not None
    record(
        session,
        actor.event("admin_branch_updated", branch_id=branch_id, details={"changes": changes}),
    )
    return branch_json(session, updated)


def list_branches_op(session: Session, after: list[Any] | None, limit: int) -> dict[str, Any]:
    after_id = after[0] if after and isinstance(after[0], str) else None
    rows = registry.list_branches_after(session, after_id, limit + 1)
    return {
        "items": [branch_json(session, row) for row in rows[:limit]],
        "next_position": [rows[limit - 1].branch_id] if len(rows) > limit else None,
    }


def get_branch_op(session: Session, branch_id: str) -> dict[str, Any]:
    return branch_json(session, _require(session, branch_id))


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


@endpoint(body=CREATE, responses={201: None, 400: None, 409: None}, tag="branches")
async def create_branch(request: Request, actor: Actor) -> Response:
    """Create a branch (a location) that clients can be granted and that can be
    connected to an upstream provider."""
    body = await read_json(request, CREATE)
    result = await _service(request).bridge.write(lambda s: create_branch_op(s, actor, body))
    return json_response(result, 201)


@endpoint(query=PAGE_QUERY, tag="branches")
async def list_branches(request: Request, actor: Actor) -> Response:
    """List branches by id with their granted clients and connections, a page at a time."""
    return await keyset_page(request, "branches", list_branches_op)


@endpoint(responses={200: None, 404: None}, tag="branches")
async def get_branch(request: Request, actor: Actor) -> Response:
    """Read one branch: its fields, granted clients and connection status (never tokens)."""
    branch_id = request.path_params["branch_id"]
    return json_response(await _service(request).bridge.read(lambda s: get_branch_op(s, branch_id)))


@endpoint(body=UPDATE, responses={200: None, 400: None, 404: None}, tag="branches")
async def update_branch(request: Request, actor: Actor) -> Response:
    """Change a branch's name, contact, Google ids or active flag (fields left out keep
    their value)."""
    body = await read_json(request, UPDATE)
    branch_id = request.path_params["branch_id"]
    return json_response(
        await _service(request).bridge.write(lambda s: update_branch_op(s, actor, branch_id, body))
    )


@endpoint(body=PROVIDER, responses={200: None, 400: None, 404: None, 409: None}, tag="branches")
async def connect(request: Request, actor: Actor) -> Response:
    """Start connecting the branch to a provider: answers `authorization_url` (valid once,
    until `expires_at`) to open in a browser signed in to the branch's account."""
    body = await read_json(request, PROVIDER)
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


@endpoint(body=DISCONNECT, responses={200: None, 400: None, 404: None, 409: None}, tag="branches")
async def disconnect(request: Request, actor: Actor) -> Response:
    """Disconnect the branch from a provider; the grant is revoked at the provider when
    no other branch uses it (`force` deletes the stored tokens even if that fails).

    The unlink, its `upstream_unlinked` row and the `admin_branch_disconnected` row naming
    the admin commit in one transaction."""
    body = await read_json(request, DISCONNECT)
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
