"""Statistics for admins (issue #14 item 4): the one service behind `GET /admin/stats`
and `oauth2-server stats`.

`collect_stats(session)` answers, from indexed tables only (`storage.stats`):

- `live_tokens`: live access tokens per (client, grant type) and live refresh tokens
  per client, the MAX_GROUPS largest groups each, with totals;
- `hourly`: tokens issued, refreshed, exchanged and revoked per UTC hour over the last
  HOURS hours (the current, partial hour last), from the audit trail's `issued`,
  `refreshed`, `exchanged` and `token_revoked` rows (settled hours through the rollup
  `oauth2_stats_hourly`, so an answer counts at most two hours of audit rows);
- `failed_client_auth`: failed client authentications in the same window per registered
  client (an id that names none, or no id, counts under null);
- `upstream_grants`: upstream grants per provider and health state (`upstream.health`);
- `branches_needing_consent`: branches whose grant needs a new consent.

A rows-per-hour figure counts audit rows written by then: read-only rows (failed client
authentication) reach the table within OAUTH2_AUDIT_FLUSH_INTERVAL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from oauth2_server.storage import stats as storage
from oauth2_server.upstream.health import state_counts

HOURS = 24
MAX_GROUPS = 100  # groups per list (largest first); `truncated` says when more exist
MAX_BRANCHES = 100
# hourly figure -> the audit action counted
HOURLY_ACTIONS = {
    "issued": "issued",
    "refreshed": "refreshed",
    "exchanged": "exchanged",
    "revoked": "token_revoked",
}


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def hourly(session: Session, now: datetime) -> dict[str, Any]:
    """The HOURS hourly buckets ending with the current hour: `since` (the first
    bucket's start, UTC), `until` (the current hour's end) and `hours`: [{"hour",
    "issued", "refreshed", "exchanged", "revoked"}], oldest first, zeros included."""
    current = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    since = current - timedelta(hours=HOURS - 1)
    until = current + timedelta(hours=1)
    counts = storage.hourly_counts(session, since, until, now)
    hours = []
    for i in range(HOURS):
        start = since + timedelta(hours=i)
        figures = {name: counts.get((action, start), 0) for name, action in HOURLY_ACTIONS.items()}
        hours.append({"hour": _iso(start), **figures})
    return {"since": _iso(since), "until": _iso(until), "hours": hours}


def collect_stats(session: Session, now: datetime | None = None) -> dict[str, Any]:
    """The statistics as JSON-ready data (module docstring), as of `now` (UTC; default
    the current time). Stores hourly rollup rows the first time an hour is needed after
    it settled (`storage.stats.hourly_counts`): run it in a transaction that commits.
    Raises what the database raises."""
    now = now or datetime.now(UTC)
    window = hourly(session, now)
    since, until = (datetime.fromisoformat(window[k]) for k in ("since", "until"))
    grants = [
        {"provider": provider, "state": state, "count": n}
        for (provider, state), n in sorted(state_counts(session).items())
        if n
    ]
    return {
        "generated_at": _iso(now),
        "live_tokens": {
            "access": storage.live_access_tokens(session, now, MAX_GROUPS),
            "refresh": storage.live_refresh_tokens(session, now, MAX_GROUPS),
        },
        "hourly": window,
        "failed_client_auth": storage.failed_client_auth(session, since, until, now, MAX_GROUPS),
        "upstream_grants": grants,
        "branches_needing_consent": storage.branches_needing_consent(session, MAX_BRANCHES),
    }
