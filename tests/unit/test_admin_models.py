"""The admin API's pydantic models (issue #10 item 6): a body is validated by the model
/admin/openapi.json documents, refusals name the field with the descriptions admins read,
and the answers the registry builds match their documented models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from openapi_spec_validator import validate as validate_openapi
from pydantic import TypeAdapter, ValidationError

from oauth2_server import admin
from oauth2_server.admin import answers, models
from oauth2_server.admin.bodies import validate
from oauth2_server.admin.errors import AdminError
from oauth2_server.admin.openapi import openapi_document
from oauth2_server.registry.clients import client_json
from oauth2_server.registry.users import user_json
from oauth2_server.storage.clients import ClientView
from oauth2_server.storage.users import UserView
from oauth2_server.upstream.disconnect import DisconnectResult

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def refusal(model: Any, data: Any) -> tuple[str | None, str]:
    with pytest.raises(AdminError) as caught:
        validate(model, data)
    assert caught.value.status == 400 and caught.value.error == "invalid_request"
    return caught.value.field, caught.value.description


@pytest.mark.parametrize(
    ("data", "field", "description"),
    [
        ([1, 2], "body", "the body must be a JSON object"),
        (None, "body", "the body must be a JSON object"),
        ({"name": "x", "color": "red"}, "color", "unknown field 'color'"),
        ({"name": "x", "a\x00b": 1}, "a?b", "unknown field 'a?b'"),
        ({"scope": "read"}, "name", "name is required"),
        ({"name": 7}, "name", "name must be a string"),
        ({"name": None}, "name", "name must be a string"),
        ({"name": "x" * 201}, "name", "name is longer than 200 characters"),
        ({"name": "a\x00b"}, "name", "name must not contain control characters"),
        ({"name": "a\ud800b"}, "name", "name must not contain control characters"),
        ({"name": "x", "public": "yes"}, "public", "public must be true or false"),
        ({"name": "x", "public": 1}, "public", "public must be true or false"),
        ({"name": "x", "scope": "a" * 2001}, "scope", "scope is longer than 2000 characters"),
        (
            {"name": "x", "redirect_uris": "https://a.example/cb"},
            "redirect_uris",
            "redirect_uris must be an array of strings",
        ),
        (
            {"name": "x", "redirect_uris": ["https://a.example/cb", 3]},
            "redirect_uris",
            "redirect_uris must be an array of strings",
        ),
        (
            {"name": "x", "redirect_uris": ["https://a.example/"] * 21},
            "redirect_uris",
            "redirect_uris has more than 20 items",
        ),
        (
            {"name": "x", "grant_types": ["a" * 101]},
            "grant_types",
            "an item of grant_types is longer than 100 characters",
        ),
        (
            {"name": "x", "redirect_uris": ["https://a.example/\x07"]},
            "redirect_uris",
            "an item of redirect_uris contains control characters",
        ),
    ],
)
def test_a_bad_body_is_refused_naming_the_field(data, field, description):
    assert refusal(models.ClientCreate, data) == (field, description)


def test_unknown_fields_come_first_then_missing_ones_then_values_in_body_order():
    body = {"public": "no", "name": 7, "zz": 1}
    assert refusal(models.ClientCreate, body) == ("zz", "unknown field 'zz'")
    assert refusal(models.UserCreate, {"active": 1})[0] == "username"
    assert refusal(models.ClientCreate, {"public": "no", "name": 7})[0] == "public"
    assert refusal(models.ClientCreate, {"name": 7, "public": "no"})[0] == "name"


def test_a_valid_body_gives_the_fields_given_in_the_bodys_order():
    body = {"scope": "read", "name": "svc", "public": False}
    assert list(validate(models.ClientCreate, body).items()) == list(body.items())
    assert validate(models.ClientUpdate, {}) == {}  # PATCH: nothing given, nothing changed


def document() -> dict[str, Any]:
    return openapi_document(admin.routes, "https://issuer.example")


def test_the_generated_document_is_valid_and_covers_every_admin_route():
    generated = document()
    validate_openapi(generated)
    operations = {(path, method) for path, item in generated["paths"].items() for method in item}
    documented = {
        ("/admin" + route.path, method.lower())
        for route in admin.routes
        if route.include_in_schema
        for method in route.methods - {"HEAD"}
    }
    assert operations == documented
    for item in generated["paths"].values():
        for operation in item.values():
            ok = [s for s in operation["responses"] if s.startswith("2")]
            schema = operation["responses"][ok[0]]["content"]["application/json"]["schema"]
            assert "$ref" in schema, operation["operationId"]  # every answer has a model


def body_schemas() -> list[tuple[str, Any, dict[str, Any]]]:
    """(operationId, body model, documented request schema) of every operation with one."""
    found = []
    for route in admin.routes:
        operation = getattr(route.endpoint, "operation", None)
        if operation is not None and operation.body is not None:
            path = document()["paths"]["/admin" + route.path]
            (method,) = route.methods - {"HEAD"}
            request = path[method.lower()]["requestBody"]["content"]["application/json"]
            found.append((route.endpoint.__name__, operation.body, request["schema"]))
    return found


@pytest.mark.parametrize(("name", "model", "schema"), body_schemas())
def test_the_documented_bounds_are_the_ones_enforced(name, model, schema):
    """Each string's maxLength and each array's maxItems, as documented, is the limit the
    server applies; a field the document does not list is refused."""
    assert schema["additionalProperties"] is False
    required = {field: "x" for field in schema.get("required", [])}
    for field, spec in schema["properties"].items():
        if spec.get("type") == "string":
            at_most = spec["maxLength"]
            validate(model, {**required, field: "x" * at_most})
            assert refusal(model, {**required, field: "x" * (at_most + 1)})[0] == field
        elif spec.get("type") == "array":
            item = "x" * spec["items"]["maxLength"]
            validate(model, {**required, field: [item] * spec["maxItems"]})
            assert refusal(model, {**required, field: [item] * (spec["maxItems"] + 1)})[0] == field
            assert refusal(model, {**required, field: [item + "x"]})[0] == field
        elif spec.get("type") == "object":  # a JSON object (a JWK Set): members bounded
            at_most = spec["maxProperties"]
            validate(model, {**required, field: {str(i): 1 for i in range(at_most)}})
            too_many = {str(i): 1 for i in range(at_most + 1)}
            assert refusal(model, {**required, field: too_many})[0] == field
            assert refusal(model, {**required, field: "x"})[0] == field
        else:
            assert spec["type"] == "boolean", (name, field)
            assert refusal(model, {**required, field: "true"})[0] == field
    assert refusal(model, {**required, "undocumented": True})[0] == "undocumented"


def strict(model: Any, value: Any) -> None:
    TypeAdapter(model).validate_python(value)


def test_registry_answers_match_their_models():
    view = ClientView(
        "svc", "Service", "client_secret_basic", ["client_credentials"], [], "read", True, NOW, NOW
    )
    client = client_json(view, ["bergen-1"])
    strict(answers.Client, client)
    strict(answers.ClientWithSecret, {**client, "client_secret": "s"})
    strict(answers.ClientUpdated, {**client, "revoked": 0})
    user = user_json(UserView(1, "sub-1", "alice", True, NOW))
    strict(answers.User, user)
    result = DisconnectResult("bergen-1", "google", "cred", True, None, "revoked", [])
    strict(answers.Disconnected, result.summary())
    strict(answers.Page[answers.User], {"items": [user], "next_cursor": None})


def test_answer_models_refuse_a_field_they_do_not_document():
    user = user_json(UserView(1, "sub-1", "alice", True, NOW))
    with pytest.raises(ValidationError):
        strict(answers.User, {**user, "password_hash": "x"})
    with pytest.raises(ValidationError):
        strict(answers.User, {k: v for k, v in user.items() if k != "username"})
