"""Admin API: GET /admin/stats, the statistics of issue #14 item 4 (the service of
`oauth2-server stats`, `registry.stats.collect_stats`)."""

from __future__ import annotations

import functools
from typing import Annotated

from pydantic import Field, with_config
from starlette.requests import Request
from starlette.responses import Response
from typing_extensions import TypedDict

from oauth2_server.admin.answers import Timestamp
from oauth2_server.admin.errors import json_response
from oauth2_server.admin.http import Actor, admin_endpoint, query_params
from oauth2_server.admin.models import STRICT
from oauth2_server.registry.stats import collect_stats

endpoint = functools.partial(admin_endpoint, tag="stats")

Count = Annotated[int, Field(ge=0)]


@with_config(STRICT)
class AccessGroup(TypedDict):
    client_id: str
    grant_type: str
    count: Count


@with_config(STRICT)
class ClientGroup(TypedDict):
    client_id: str | None
    count: Count


@with_config(STRICT)
class LiveAccess(TypedDict):
    """Live access tokens per (client, grant type), the 100 largest groups."""

    groups: list[AccessGroup]
    truncated: bool
    total: Count


@with_config(STRICT)
class ClientCounts(TypedDict):
    """Counts per client id, the 100 largest groups."""

    groups: list[ClientGroup]
    truncated: bool
    total: Count


@with_config(STRICT)
class LiveTokens(TypedDict):
    access: LiveAccess
    refresh: Annotated[ClientCounts, Field(description="current refresh tokens per client")]


@with_config(STRICT)
class Hour(TypedDict):
    """One UTC hour (`hour`: its start): tokens issued, refreshed (rotations), exchanged
    (RFC 8693) and revoked in it."""

    hour: Timestamp
    issued: Count
    refreshed: Count
    exchanged: Count
    revoked: Count


@with_config(STRICT)
class Hourly(TypedDict):
    """The last 24 hours, oldest first; the last one is the current, partial hour."""

    since: Timestamp
    until: Annotated[Timestamp, Field(description="end of the current hour")]
    hours: list[Hour]


@with_config(STRICT)
class GrantCount(TypedDict):
    provider: str
    state: str
    count: Count


@with_config(STRICT)
class ConsentNeeded(TypedDict):
    branch_id: str
    provider: str
    reason: str | None


@with_config(STRICT)
class BranchesNeedingConsent(TypedDict):
    """Branches whose upstream grant needs a new consent (the first 100 by branch id)."""

    items: list[ConsentNeeded]
    total: Count
    truncated: bool


@with_config(STRICT)
class Stats(TypedDict):
    """Token and upstream statistics, read from indexed tables."""

    generated_at: Timestamp
    live_tokens: LiveTokens
    hourly: Hourly
    failed_client_auth: Annotated[
        ClientCounts,
        Field(
            description="failed client authentications since `hourly.since` per registered "
            "client (`client_id` null: an id that names no registered client, or none)"
        ),
    ]
    upstream_grants: Annotated[
        list[GrantCount], Field(description="upstream grants per provider and health state")
    ]
    branches_needing_consent: BranchesNeedingConsent


@endpoint(Stats, errors=(400,))
async def get_stats(request: Request, actor: Actor) -> Response:
    """Token and upstream statistics.

    Live tokens by client and grant type; tokens issued, refreshed, exchanged and revoked
    per hour over the last 24 hours; failed client authentications by client; upstream
    grants by provider and state; branches needing consent (the service of
    `oauth2-server stats`). Read from indexed tables, never a scan of the audit trail."""
    query_params(request, set())  # no parameters: an unknown one is a 400 naming it
    stats = await request.app.state.oauth.bridge.write(collect_stats)  # may store rollups
    return json_response(stats)
