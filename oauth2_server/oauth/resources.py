"""Resource indicators (RFC 8707): which protected resources an access token is for.

A client is registered with the resources it may name (`oauth2_clients.resources`, set by
`registry.clients`). A request names them with the `resource` parameter, which may repeat
(§2), at the authorization endpoint (also pushed, RFC 9126) and at the token endpoint
(authorization_code, refresh_token, client_credentials grants). The access token's `aud`
is then the resource(s) (RFC 9068 §3: one string for one resource, else an array); with no
`resource` parameter nothing changes (`aud` is `OAUTH2_AUDIENCE`).

The rules (§2, §2.2), each refused with `invalid_target` (HTTP 400; at the authorization
endpoint, an error redirect):

- a resource is an absolute URI (RFC 3986 §4.3: a scheme, and for http(s) a host) without
  a fragment, at most `MAX_RESOURCE_LENGTH` characters of RFC 3986's character set; at
  most `MAX_RESOURCES` per request (and per client);
- it is one the client is registered for, compared as exact strings (like redirect URIs);
- at the token endpoint of the authorization_code grant, every resource was granted at
  authorization (stored on the code); with none named, the token is for all of them;
- a refresh may narrow the family's granted resources, never widen them; the new refresh
  token keeps the family's grant (as it keeps the scope).

Token exchange (RFC 8693) keeps its own rule: the provider is named in `audience` and a
`resource` there is `invalid_target` (`oauth.token_exchange`).

A refusal is audited as `resource_refused` (flag `invalid_target`) through
`token_context.refusals`: the service writes them after the rolled-back transaction at the
token and PAR endpoints; the authorization flow commits them with its error redirect.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from authlib.oauth2 import OAuth2Error

from oauth2_server.audit.log import AuditEvent

PARAMETER = "resource"
MAX_RESOURCES = 10  # per request and per client
MAX_RESOURCE_LENGTH = 512  # characters of one resource URI
# RFC 3986 §3.1 scheme, then only RFC 3986 characters (unreserved, reserved, `%`); the
# fragment (`#`) is refused by its own rule in `resource_problem`.
_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
_HOST_SCHEMES = ("http", "https")
_HOST = re.compile(r"//[^/?@]*@?[^/?:@]+")


class InvalidTargetError(OAuth2Error):
    """RFC 8707 §2: the requested resource is invalid, unknown, or not allowed (400)."""

    error = "invalid_target"
    status_code = 400


def resource_problem(uri: str) -> str | None:
    """Why `uri` is not an acceptable resource indicator (RFC 8707 §2), or None when it
    is an absolute URI without a fragment, within `MAX_RESOURCE_LENGTH` characters."""
    if len(uri) > MAX_RESOURCE_LENGTH:
        return f"a resource is at most {MAX_RESOURCE_LENGTH} characters"
    if "#" in uri:
        return "a resource must not have a fragment (RFC 8707 section 2)"
    if not _ABSOLUTE_URI.fullmatch(uri):
        return "a resource is an absolute URI (RFC 8707 section 2, RFC 3986 section 4.3)"
    scheme, _, rest = uri.partition(":")
    if scheme.lower() in _HOST_SCHEMES and not _HOST.match(rest):
        return f"a {scheme} resource names a host"
    return None


def requested_resources(request: Any) -> list[str]:
    """The `resource` parameters of the request, in order, duplicates dropped (§2: the
    parameter may repeat). Raises InvalidTargetError for more than `MAX_RESOURCES`, an
    empty value or a malformed one (`resource_problem`)."""
    values = request.payload.datalist.get(PARAMETER) or []
    if len(values) > MAX_RESOURCES:
        raise InvalidTargetError(description=f"at most {MAX_RESOURCES} resource parameters")
    for value in values:
        problem = resource_problem(value) if value else "a resource parameter is empty"
        if problem is not None:
            raise InvalidTargetError(description=problem)
    return list(dict.fromkeys(values))


def check_registered(client: Any, requested: Sequence[str]) -> None:
    """Every requested resource is one `client` is registered for (RFC 8707 §2); raises
    InvalidTargetError naming none of them (they are the caller's input)."""
    allowed = client.record.resources
    for resource in requested:
        if resource not in allowed:
            raise InvalidTargetError(
                description="a requested resource is not registered for this client"
            )


def narrowed(requested: Sequence[str], granted: Sequence[str] | None, what: str) -> list[str]:
    """The resources a token is for: `requested` when each was granted (RFC 8707 §2.2), or
    all of `granted` when none is requested (an empty list: the default audience). Raises
    InvalidTargetError when a requested one was not granted; `what` names the grant
    ("the authorization", "the refresh token")."""
    granted = list(granted or ())
    if not requested:
        return granted
    for resource in requested:
        if resource not in granted:
            raise InvalidTargetError(description=f"a requested resource was not granted by {what}")
    return list(requested)


def registered_resources(request: Any) -> list[str]:
    """The request's `resource` parameters, each registered for its client (§2). Raises
    InvalidTargetError."""
    requested = requested_resources(request)
    check_registered(request.client, requested)
    return requested


def granted_subset(request: Any, granted: Sequence[str] | None, what: str) -> list[str]:
    """The resources a token-endpoint request gets (§2.2): the requested ones, each within
    `granted` (all of `granted` when none is named; `narrowed`) and still registered for
    the client. Raises InvalidTargetError."""
    resources = narrowed(requested_resources(request), granted, what)
    check_registered(request.client, resources)
    return resources


def audience(resources: Sequence[str]) -> str | list[str] | None:
    """The `aud` claim for `resources` (RFC 9068 §3): one string, an array, or None (the
    server's default audience)."""
    if not resources:
        return None
    return resources[0] if len(resources) == 1 else list(resources)


def refusal(request: Any, error: InvalidTargetError, grant_type: str | None) -> None:
    """Queue the `resource_refused` audit row of a refused request (once per request):
    the requested resources (each cut to 200 characters, at most `MAX_RESOURCES`) and why."""
    refusals = request.token_context.refusals
    if any(event.action == "resource_refused" for event in refusals):
        return
    values = (request.payload.datalist.get(PARAMETER) or [])[:MAX_RESOURCES]
    client = getattr(request, "client", None)
    refusals.append(
        AuditEvent(
            "resource_refused",
            request.context,
            client_id=client.client_id if client is not None else None,
            grant_type=grant_type,
            flags=["invalid_target"],
            details={
                "resources": [value[:200] for value in values],
                "reason": error.description,
            },
        )
    )


def checked(request: Any, grant_type: str | None, decide: Any) -> list[str]:
    """Run `decide()` (returning the token's resources); on InvalidTargetError queue the
    audit row (`refusal`) and raise it again."""
    try:
        return decide()
    except InvalidTargetError as error:
        refusal(request, error, grant_type)
        raise
