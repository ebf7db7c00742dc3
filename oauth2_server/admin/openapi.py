"""GET /admin/openapi.json: the admin API's OpenAPI 3.1 document.

Built from the routing table with Starlette's `BaseSchemaGenerator.get_endpoints` (the
same walk `SchemaGenerator` does), reading each operation from what already exists
rather than a second description: the handler's docstring (summary and description),
the `admin_endpoint(...)` metadata (body `Field` specs, which are also what validates the
body, query parameters, responses) and the path's `{parameters}`. Served without
authentication: it holds no data; /admin/docs renders it (`admin.docs`).

`servers` is the issuer (RFC 8414 §2 `issuer`): the paths already carry the `/admin`
prefix, so a client joins them to the issuer to reach /admin/... (a server URL ending
in /admin would double it).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from starlette.routing import BaseRoute
from starlette.schemas import BaseSchemaGenerator

from oauth2_server.admin.http import body_schema

PREFIX = "/admin"
_PATH_PARAM = re.compile(r"{(\w+)}")
_ERROR = {"$ref": "#/components/responses/Error"}
STATUS_TEXT = {
    200: "OK",
    201: "Created",
    400: "Invalid input; `field` names it. Nothing was changed.",
    401: "Missing, invalid, revoked or expired access token (RFC 6750 §3.1)",
    403: "The access token lacks scope `admin` (`insufficient_scope`)",
    404: "Unknown id; `field` names it",
    409: "Duplicate name or id; `field` names it",
}

COMPONENTS: dict[str, Any] = {
    "securitySchemes": {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT (RFC 9068) from this server, scope admin",
        }
    },
    "responses": {
        "Error": {
            "description": "An error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    },
    "schemas": {
        "Error": {
            "type": "object",
            "required": ["error", "error_description"],
            "properties": {
                "error": {"type": "string"},
                "error_description": {"type": "string"},
                "field": {"type": "string", "description": "the body field or parameter at fault"},
            },
        },
        "Client": {
            "type": "object",
            "properties": {
                "client_id": {"type": "string"},
                "name": {"type": "string"},
                "token_endpoint_auth_method": {"type": "string"},
                "grant_types": {"type": "array", "items": {"type": "string"}},
                "redirect_uris": {"type": "array", "items": {"type": "string"}},
                "scope": {"type": "string"},
                "active": {"type": "boolean"},
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "client_secret": {
                    "type": "string",
                    "description": "only in the answer to creation and rotation",
                },
            },
        },
        "User": {
            "type": "object",
            "properties": {
                "subject": {"type": "string"},
                "username": {"type": "string"},
                "active": {"type": "boolean"},
                "created_at": {"type": "string", "format": "date-time"},
            },
        },
    },
}


def _operation(path: str, func: Any, meta: dict[str, Any]) -> dict[str, Any]:
    doc = inspect.getdoc(func) or ""
    summary = doc.split("\n\n")[0].replace("\n", " ")
    operation: dict[str, Any] = {
        "operationId": func.__name__,
        "summary": summary.split(". ")[0].rstrip("."),
        "description": doc,
        "tags": [meta.get("tag", "admin")],
        "security": [{"bearer": ["admin"]}],
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PATH_PARAM.findall(path)
        ]
        + [
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": text,
                "schema": {"type": "string"},
            }
            for name, text in meta.get("query", {}).items()
        ],
    }
    if "body" in meta:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body_schema(meta["body"])}},
        }
    responses: dict[str, Any] = {}
    for status, schema in (meta.get("responses") or {200: None}).items():
        if status >= 400:
            responses[str(status)] = _ERROR
            continue
        answer: dict[str, Any] = {"description": STATUS_TEXT[status]}
        answer["content"] = {"application/json": {"schema": schema or {"type": "object"}}}
        responses[str(status)] = answer
    responses.setdefault("401", _ERROR)
    responses.setdefault("403", _ERROR)
    operation["responses"] = responses
    return operation


def openapi_document(routes: list[BaseRoute], issuer: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the admin routes (paths prefixed with /admin), with
    `servers` set to `issuer` (the issuer URL without a trailing slash)."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in BaseSchemaGenerator().get_endpoints(routes):
        meta = getattr(endpoint.func, "openapi", None)
        if meta is None:
            continue
        path = PREFIX + endpoint.path
        paths.setdefault(path, {})[endpoint.http_method] = _operation(path, endpoint.func, meta)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "oauth2_server admin API",
            "version": "1",
            "description": "Clients, users, branches, tokens and the audit trail. "
            "Authenticate with an access token of this server with scope `admin` "
            "(RFC 6750 §2.1). Errors are JSON with `error`, `error_description` and "
            "`field`.",
        },
        "servers": [{"url": issuer, "description": "this server (its OAuth issuer)"}],
        "paths": paths,
        "components": COMPONENTS,
    }
