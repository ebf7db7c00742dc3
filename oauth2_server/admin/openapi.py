"""GET /admin/openapi.json: the admin API's OpenAPI 3.1 document, generated.

The paths come from the routing table (`admin.routes`) with Starlette's
`BaseSchemaGenerator.get_endpoints` (the walk `SchemaGenerator` does); each operation
from what already exists rather than a second description: the handler's docstring
(summary and description), its `admin_endpoint(...)` `Operation` (body model, query
parameters, answers) and the path's `{parameters}`. The schemas are pydantic's JSON
Schema of the `admin.models` models that validate the bodies (`validation` mode) and
describe the answers (`serialization` mode), gathered once into `components/schemas`.
Served without authentication: it holds no data; /admin/docs renders it (`admin.docs`).

`servers` is the issuer (RFC 8414 §2 `issuer`): the paths already carry the `/admin`
prefix, so a client joins them to the issuer to reach /admin/... (a server URL ending
in /admin would double it).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode
from starlette.routing import BaseRoute
from starlette.schemas import BaseSchemaGenerator, EndpointInfo

from oauth2_server.admin.answers import Error
from oauth2_server.admin.bodies import adapter
from oauth2_server.admin.http import Operation

PREFIX = "/admin"
_PATH_PARAM = re.compile(r"{(\w+)}")
_ERROR = {"$ref": "#/components/responses/Error"}
REF_TEMPLATE = "#/components/schemas/{model}"
STATUS_TEXT = {
    200: "OK",
    201: "Created",
    400: "Invalid input; `field` names it. Nothing was changed.",
    401: "Missing, invalid, revoked or expired access token (RFC 6750 §3.1)",
    403: "The access token lacks scope `admin` (`insufficient_scope`)",
    404: "Unknown id; `field` names it",
    409: "Duplicate name or id; `field` names it",
}
SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT (RFC 9068) from this server, scope admin",
    }
}
Key = tuple[Any, JsonSchemaMode]


def _operations(routes: Sequence[BaseRoute]) -> list[tuple[EndpointInfo, Operation]]:
    """Every documented endpoint (path, method, function) with its Operation."""
    return [
        (endpoint, endpoint.func.operation)
        for endpoint in BaseSchemaGenerator().get_endpoints(list(routes))
        if hasattr(endpoint.func, "operation")
    ]


def _answers(operations: list[tuple[EndpointInfo, Operation]]) -> tuple[dict[Key, Any], Any]:
    """The JSON Schema of every answer model the operations name ({(model, mode): $ref}),
    and the named definitions they refer to (components/schemas)."""
    keys: dict[Key, TypeAdapter[Any]] = {(Error, "serialization"): adapter(Error)}
    for _, operation in operations:
        if operation.answer is not None:
            keys[(operation.answer, "serialization")] = adapter(operation.answer)
    inputs = [(model, mode, typed) for (model, mode), typed in keys.items()]
    schemas, definitions = TypeAdapter.json_schemas(inputs, ref_template=REF_TEMPLATE)
    return schemas, definitions.get("$defs", {})


def _body(model: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    """A body model's JSON Schema, inline in its operation (what validates the body); a
    model it nests goes into `definitions`."""
    schema = adapter(model).json_schema(mode="validation", ref_template=REF_TEMPLATE)
    definitions.update(schema.pop("$defs", {}))
    return schema


def _parameters(path: str, operation: Operation) -> list[dict[str, Any]]:
    path_params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(path)
    ]
    query = [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": text,
            "schema": {"type": "string"},
        }
        for name, text in operation.query.items()
    ]
    return path_params + query


def _operation(
    path: str, func: Any, operation: Operation, schemas: dict[Key, Any], definitions: Any
) -> dict[str, Any]:
    """One OpenAPI operation object."""
    doc = inspect.getdoc(func) or ""
    summary = doc.split("\n\n")[0].replace("\n", " ")
    document: dict[str, Any] = {
        "operationId": func.__name__,
        "summary": summary.split(". ")[0].rstrip("."),
        "description": doc,
        "tags": [operation.tag],
        "security": [{"bearer": ["admin"]}],
        "parameters": _parameters(path, operation),
    }
    if operation.body is not None:
        schema = _body(operation.body, definitions)
        document["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    answer = operation.answer
    schema = schemas[(answer, "serialization")] if answer is not None else {"type": "object"}
    ok = {"description": STATUS_TEXT[operation.status]}
    ok["content"] = {"application/json": {"schema": schema}}
    errors = (*operation.errors, 401, 403)
    document["responses"] = {str(operation.status): ok, **{str(e): _ERROR for e in errors}}
    return document


def _paths_and_components(routes: Sequence[BaseRoute]) -> tuple[Any, Any]:
    operations = _operations(routes)
    schemas, definitions = _answers(operations)
    paths: dict[str, dict[str, Any]] = {}
    for endpoint, operation in operations:
        path = PREFIX + endpoint.path
        entry = _operation(path, endpoint.func, operation, schemas, definitions)
        paths.setdefault(path, {})[endpoint.http_method] = entry
    error = schemas[(Error, "serialization")]
    components = {
        "securitySchemes": SECURITY_SCHEMES,
        "responses": {
            "Error": {"description": "An error", "content": {"application/json": {"schema": error}}}
        },
        "schemas": definitions,
    }
    return paths, components


def openapi_document(routes: Sequence[BaseRoute], issuer: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the admin routes (paths prefixed with /admin), with
    `servers` set to `issuer` (the issuer URL without a trailing slash)."""
    paths, components = _paths_and_components(routes)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "oauth2_server admin API",
            "version": "1",
            "description": "Clients, users, branches, tokens and the audit trail. "
            "Authenticate with an access token of this server with scope `admin` "
            "(RFC 6750 §2.1); with OAUTH2_ADMIN_REQUIRE_PERSON on, of a client registered "
            "to a person (`person`), else 403 `person_required`. Errors are JSON with "
            "`error`, `error_description` and `field`.",
        },
        "servers": [{"url": issuer, "description": "this server (its OAuth issuer)"}],
        "paths": paths,
        "components": components,
    }
