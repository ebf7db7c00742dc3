"""The admin API under /admin: one routing table, JSON in and out (DESIGN.md).

Every route but /admin/openapi.json and the Swagger UI page /admin/docs (`admin.docs`)
needs an access token of this server with scope `admin` (`admin.http.authenticate`).
Handlers live one module per resource; each change is made and audited (`admin_*` rows)
in one transaction.
"""

from __future__ import annotations

import functools
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from oauth2_server.admin import (
    audit,
    audit_export,
    branches,
    clients,
    docs,
    stats,
    tokens,
    users,
)
from oauth2_server.admin.openapi import openapi_document


async def openapi_json(request: Request) -> JSONResponse:
    """GET /admin/openapi.json: the OpenAPI 3.1 document of the routes below, whose
    `servers` entry is this server's issuer."""
    return JSONResponse(_openapi(request.app.state.oauth.issuer))


@functools.lru_cache(maxsize=8)  # generated once per issuer (an app has one)
def _openapi(issuer: str) -> dict[str, Any]:
    return openapi_document(routes, issuer)


routes = [
    Route("/openapi.json", openapi_json, methods=["GET"], include_in_schema=False),
    Route("/docs", docs.page, methods=["GET"], include_in_schema=False),
    Route("/docs/static/{name}", docs.asset, methods=["GET"], include_in_schema=False),
    Route("/clients", clients.list_clients, methods=["GET"]),
    Route("/clients", clients.create_client, methods=["POST"]),
    Route("/clients/{client_id}", clients.get_client, methods=["GET"]),
    Route("/clients/{client_id}", clients.update_client, methods=["PATCH"]),
    Route("/clients/{client_id}", clients.delete_client, methods=["DELETE"]),
    Route("/clients/{client_id}/secret", clients.rotate_secret, methods=["POST"]),
    Route("/users", users.list_users, methods=["GET"]),
    Route("/users", users.create_user, methods=["POST"]),
    Route("/users/{subject}", users.get_user, methods=["GET"]),
    Route("/users/{subject}", users.update_user, methods=["PATCH"]),
    Route("/users/{subject}/deactivate", users.deactivate_user, methods=["POST"]),
    Route("/users/{subject}/password", users.set_password, methods=["PUT"]),
    Route("/users/{subject}/grants/{client_id}", users.revoke_grant, methods=["DELETE"]),
    Route("/branches", branches.list_branches, methods=["GET"]),
    Route("/branches", branches.create_branch, methods=["POST"]),
    Route("/branches/{branch_id}", branches.get_branch, methods=["GET"]),
    Route("/branches/{branch_id}", branches.update_branch, methods=["PATCH"]),
    Route("/branches/{branch_id}/connect", branches.connect, methods=["POST"]),
    Route("/branches/{branch_id}/disconnect", branches.disconnect, methods=["POST"]),
    Route("/upstream/grants", branches.list_grants, methods=["GET"]),
    Route("/tokens", tokens.list_tokens, methods=["GET"]),
    Route("/tokens/revoke", tokens.revoke, methods=["POST"]),
    Route("/audit", audit.query_audit, methods=["GET"]),
    Route("/stats", stats.get_stats, methods=["GET"]),
    Route("/audit/summary", audit.summarize_audit, methods=["GET"]),
    Route("/audit/export", audit_export.export_audit, methods=["GET"]),
    Route("/audit/exports/{export_id}/manifest", audit_export.export_manifest, methods=["GET"]),
]
