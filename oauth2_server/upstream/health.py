"""Upstream grant health (issue #14 item 2): one rule, read from the grant's columns.

A grant is
- `needs_consent`: the provider refused it (`invalid_grant`) or narrowed its scope; an
  admin must connect a branch again;
- `refresh_failing`: its last refresh failed (`attempts` in a row since `since`, the last
  one's `error_class`: `upstream_unavailable`, `provider_refused`, `misconfigured`);
  the stored tokens are kept and the refresh worker retries with backoff;
- `ok`: otherwise.

`branches grants` (CLI), `GET /admin/upstream/grants` and `branches status` show it
through `grant_health`; `/metrics` counts grants per provider and state through
`state_counts` (gauge `oauth2_upstream_grants`). Never a token.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from oauth2_server.config.upstream import PROVIDERS
from oauth2_server.storage import upstream_refresh as refresh_storage
from oauth2_server.upstream.freshness import worker_due_at

STATES = ("ok", "refresh_failing", "needs_consent")
MAX_LISTED = 1000  # grants one listing returns at most


def grant_state(needs_consent: bool, refresh_failures: int) -> str:
    """The health state of a grant (one of STATES): the one rule."""
    if needs_consent:
        return "needs_consent"
    return "refresh_failing" if refresh_failures > 0 else "ok"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def grant_health(row: Any, ahead: int) -> dict[str, Any]:
    """The health of one grant as JSON-ready fields: `state`, `refresh_failing` ({since,
    attempts, error_class, last_error_at}, or None unless failing), `last_refreshed_at`,
    `next_refresh_at` (when the refresh worker, refreshing `ahead` seconds before expiry,
    next tries; None when it needs consent), `access_expires_at`. `row`: anything with
    the grant's health columns (`storage.upstream_refresh.GrantRow`,
    `storage.upstream.ConnectionStatus`). Times ISO 8601 UTC."""
    state = grant_state(row.needs_consent, row.refresh_failures)
    failing = None
    if state == "refresh_failing":
        failing = {
            "since": _iso(row.refresh_failing_since),
            "attempts": row.refresh_failures,
            "error_class": row.last_refresh_error_class,
            "last_error_at": _iso(row.last_refresh_error_at),
        }
    next_at = None
    if state != "needs_consent" and row.access_expires_at is not None:
        next_at = worker_due_at(
            ahead, row.access_expires_at, row.access_issued_at, row.next_refresh_at
        )
    return {
        "state": state,
        "refresh_failing": failing,
        "last_refreshed_at": _iso(row.last_refreshed_at),
        "next_refresh_at": _iso(next_at),
        "access_expires_at": _iso(row.access_expires_at),
    }


def list_grants(session: Session, ahead: int, provider: str | None = None) -> dict[str, Any]:
    """Every upstream grant (at most MAX_LISTED; only `provider`'s when given) with its
    health and linked branches, and the count per state: {"grants": [...], "counts":
    {state: n}, "truncated": bool}. The one service of `branches grants` and
    `GET /admin/upstream/grants`."""
    rows = refresh_storage.grants(session, provider, limit=MAX_LISTED + 1)
    items = [
        {
            "credential_id": row.id,
            "provider": row.provider,
            "account_email": row.account_email,
            "branches": list(row.branches),
            "consent_error": row.consent_error,
            "refresh_in_progress": row.refresh_started_at is not None,
            **grant_health(row, ahead),
        }
        for row in rows[:MAX_LISTED]
    ]
    counts = dict.fromkeys(STATES, 0)
    for item in items:
        counts[item["state"]] += 1
    return {"grants": items, "counts": counts, "truncated": len(rows) > MAX_LISTED}


def state_counts(session: Session) -> dict[tuple[str, str], int]:
    """Grants per (provider, state), every known provider and state present (0 when
    none), so the gauge's label values are bounded and a state that empties reads 0.
    Grants of a provider this build does not know count under `other`."""
    known = tuple(provider.name for provider in PROVIDERS)
    counts = {(provider, state): 0 for provider in (*known, "other") for state in STATES}
    for provider, needs_consent, failing, n in refresh_storage.grant_counts(session):
        key = (provider if provider in known else "other", grant_state(needs_consent, failing))
        counts[key] += n
    return counts
