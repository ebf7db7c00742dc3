"""Reading an admin request's JSON body and validating it with its model (`admin.models`).

The body must be `Content-Type: application/json` (else 415), at most
`OAUTH2_MAX_BODY_BYTES` (else 413), UTF-8 JSON (else 400 `malformed JSON: …`), and an
object matching the model. pydantic's first error becomes one AdminError 400 naming the
field at fault, with the description an admin reads: an unknown field first, then a
missing one, then the first bad value in the order the body gives them. Text holding a
control character (or, through a JSON escape, a lone surrogate, which is not UTF-8) is
refused naming its field.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails
from starlette.requests import Request

from oauth2_server.admin.errors import AdminError, bad_request
from oauth2_server.web.forms import BadRequest, read_body

# What an unknown field's name may show of itself in `field` and the description.
_UNSHOWN = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_CONTROLS = ("string_pattern_mismatch", "string_unicode")


@functools.cache
def adapter(model: Any) -> TypeAdapter[Any]:
    """The pydantic validator of a body model, built once."""
    return TypeAdapter(model)


def _describe(error: ErrorDetails) -> tuple[str, str]:
    """(field, description) of one pydantic error on a body (loc: field[, item index])."""
    kind, loc, ctx = error["type"], error["loc"], error.get("ctx") or {}
    name = str(loc[0])
    if kind == "extra_forbidden":
        shown = _UNSHOWN.sub("?", name[:64])
        return shown, f"unknown field {shown!r}"
    if kind == "missing":
        return name, f"{name} is required"
    if kind == "bool_type":
        return name, f"{name} must be true or false"
    if kind == "list_type" or (kind == "string_type" and len(loc) > 1):
        return name, f"{name} must be an array of strings"
    if kind == "string_type":
        return name, f"{name} must be a string"
    if kind == "too_long":
        return name, f"{name} has more than {ctx['max_length']} items"
    if kind == "string_too_long":
        length = ctx["max_length"]
        if len(loc) > 1:
            return name, f"an item of {name} is longer than {length} characters"
        return name, f"{name} is longer than {length} characters"
    if kind in _CONTROLS and len(loc) > 1:
        return name, f"an item of {name} contains control characters"
    if kind in _CONTROLS:
        return name, f"{name} must not contain control characters"
    return name, f"{name}: {error['msg']}"  # no body field has another kind of check


def _first(errors: list[ErrorDetails], data: dict[str, Any]) -> ErrorDetails:
    """The error an admin is told about: unknown fields, then missing ones, then values in
    the body's order."""
    order = {name: index for index, name in enumerate(data)}

    def rank(error: ErrorDetails) -> tuple[int, int]:
        kind = error["type"]
        tier = 0 if kind == "extra_forbidden" else 1 if kind == "missing" else 2
        return tier, order.get(str(error["loc"][0]), 0) if error["loc"] else 0

    return min(errors, key=rank)


def validate(model: Any, data: Any) -> dict[str, Any]:
    """`data` (a decoded JSON value) checked against `model`: the fields given, as a
    dict. Raises AdminError 400 naming the field (`body` when it is not an object)."""
    if not isinstance(data, dict):
        raise bad_request("body", "the body must be a JSON object")
    try:
        valid = adapter(model).validate_python(data)
    except ValidationError as exc:
        field, description = _describe(_first(exc.errors(), data))
        raise bad_request(field, description) from None
    return {name: valid[name] for name in data}  # the body's order, for its audit row


async def read_json(request: Request, model: Any) -> dict[str, Any]:
    """The request's JSON body validated with `model` (Content-Type application/json, at
    most `OAUTH2_MAX_BODY_BYTES`, UTF-8). Raises AdminError 400/413/415."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise AdminError(415, "invalid_request", "Content-Type must be application/json", "body")
    try:
        raw = await read_body(request, request.app.state.oauth.settings.max_body_bytes)
    except BadRequest as exc:
        raise AdminError(exc.status, "invalid_request", exc.description, "body") from None
    try:
        data = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request("body", f"malformed JSON: {exc}") from None
    return validate(model, data)
