"""Admin API: clients (RFC 6749 §2; RFC 7591 metadata names), over HTTP.

The rules and the changes are `registry.clients`, which the CLI calls too; these
handlers take the body validated with its `admin.models` model, call the registry
through the Bridge (one transaction, audited), and drop the client from this worker's
`ClientCache` after a change (every other worker and instance is notified by
`storage.clients`). A secret is returned once (creation,
rotation); nothing else ever returns it or its hash.
"""

from __future__ import annotations

import functools
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from oauth2_server.admin import answers, models
from oauth2_server.admin.errors import json_response
from oauth2_server.admin.http import Actor, admin_endpoint, listing, reading
from oauth2_server.registry import clients as registry

endpoint = functools.partial(admin_endpoint, tag="clients")


def _service(request: Request) -> Any:
    return request.app.state.oauth


@endpoint(answers.ClientWithSecret, status=201, body=models.ClientCreate, errors=(400, 409))
async def create_client(request: Request, actor: Actor, body: dict[str, Any]) -> Response:
    """Register a client; the answer carries `client_secret`, shown only this once."""
    result, secret = await _service(request).bridge.write(
        lambda s: registry.create_client(s, actor, body)
    )
    if secret is not None:
        result["client_secret"] = secret
    return json_response(result)


get_client = reading(
    "get_client",
    "client_id",
    registry.get_client,
    answers.Client,
    "Read one client (never its secret or hash).",
    tag="clients",
)


async def _change(request: Request, change: Any) -> Response:
    """Run `change(session, client_id)` in one transaction, then drop the client from
    this worker's cache."""
    client_id = request.path_params["client_id"]
    service = _service(request)
    result = await service.bridge.write(lambda s: change(s, client_id))
    service.clients.invalidate(client_id)
    return json_response(result)


@endpoint(answers.ClientUpdated, body=models.ClientUpdate, errors=(400, 404, 409))
async def update_client(request: Request, actor: Actor, body: dict[str, Any]) -> Response:
    """Change redirect URIs, scope, grant types, name or the active flag. Fields left
    out keep their value; `active: false` also revokes every token of the client."""
    return await _change(request, lambda s, c: registry.update_client(s, actor, c, body))


@endpoint(answers.ClientWithSecret, errors=(400, 404))
async def rotate_secret(request: Request, actor: Actor) -> Response:
    """Give a confidential client a new secret, returned once; the old one stops working."""
    return await _change(request, lambda s, c: registry.rotate_secret(s, actor, c))


@endpoint(answers.ClientDeleted, errors=(404,))
async def delete_client(request: Request, actor: Actor) -> Response:
    """Delete a client after revoking all its tokens; answers how many were revoked."""
    return await _change(request, lambda s, c: registry.delete_client(s, actor, c))


list_clients = listing(
    "clients",
    registry.list_clients,
    answers.Client,
    "List clients in registration order, a page at a time (`next_cursor`).",
)
