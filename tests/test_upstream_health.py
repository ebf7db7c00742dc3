"""Upstream grant health (issue #14 item 2) under the refresh worker, against the
stand-in provider: a provider outage makes a grant `refresh_failing` (since, attempts,
error class; exponential backoff; the refresh token never lost), recovery makes it `ok`
again, a revoked grant is `needs_consent`; the CLI, the admin API and /metrics show the
same states, and the transitions' webhook events are in the outbox.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

from tests.admin_helpers import admin_api
from tests.fake_google import cli, connect_branch, credential_of, decrypt_stored
from tests.upstream_worker_helpers import grant, make_due, outbox_events, wait_for

BACKOFF_MAX = 4
UPSTREAM_ENV = {
    "OAUTH2_UPSTREAM_REFRESH_WORKER": "true",
    "OAUTH2_UPSTREAM_REFRESH_INTERVAL": "1",
    "OAUTH2_UPSTREAM_REFRESH_BACKOFF_MAX": str(BACKOFF_MAX),
    "OAUTH2_UPSTREAM_FAILING_THRESHOLD": "2",
}


def status_health(server: Any, branch_id: str) -> dict[str, Any]:
    done = cli(server, "branches", "status", branch_id, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["branches"][0]["health"]


def listed(server: Any, credential_id: str) -> dict[str, Any]:
    done = cli(server, "branches", "grants", "--json")
    assert done.returncode == 0, done.stderr
    return next(g for g in json.loads(done.stdout)["grants"] if g["credential_id"] == credential_id)


def gauge(server: Any) -> dict[tuple[str, str], float]:
    text = server.get("/metrics").text
    pattern = r'^oauth2_upstream_grants\{provider="(\w+)",state="(\w+)"\} (\S+)$'
    return {(p, s): float(v) for p, s, v in re.findall(pattern, text, re.MULTILINE)}


def counted_in_database(db: Any) -> dict[tuple[str, str], float]:
    """Grants per (provider, state) straight from the rows (the rule, restated)."""
    counts: dict[tuple[str, str], float] = {}
    for provider, needs_consent, failures in db.rows(
        "SELECT provider, needs_consent, refresh_failures FROM oauth2_upstream_credentials"
    ):
        state = "needs_consent" if needs_consent else "refresh_failing" if failures else "ok"
        counts[(provider, state)] = counts.get((provider, state), 0) + 1
    return counts


def gauge_matches_database(server: Any, db: Any) -> bool:
    shown = {key: n for key, n in gauge(server).items() if n}
    return shown == counted_in_database(db)


def test_outage_makes_grant_refresh_failing_with_backoff_then_recovery_ok(
    upstream, db, google, unique
):
    branch_id = unique("outage")
    connect_branch(upstream, db, google, branch_id)
    credential_id = credential_of(db, branch_id)["id"]
    original_refresh = decrypt_stored(db.keys, credential_of(db, branch_id), "refresh")
    google.refresh_mode = "error500"
    make_due(db, branch_id)

    first = wait_for(lambda: (g := grant(db, branch_id)).refresh_failures >= 1 and g)
    since = first.refresh_failing_since
    assert since == first.last_refresh_error_at
    failing = wait_for(lambda: (g := grant(db, branch_id)).refresh_failures >= 3 and g, timeout=20)

    # exponential backoff: after n failures the worker waits min(cap, 2^(n-1)) s ± 20 %
    wait = min(BACKOFF_MAX, 2 ** (failing.refresh_failures - 1))
    gap = failing.next_refresh_at - failing.last_refresh_error_at
    assert timedelta(seconds=0.8 * wait) <= gap <= timedelta(seconds=1.2 * wait)
    assert failing.refresh_failing_since == since
    assert failing.last_refresh_error_class == "upstream_unavailable"
    # the stored refresh token is never lost
    assert decrypt_stored(db.keys, credential_of(db, branch_id), "refresh") == original_refresh

    health = status_health(upstream, branch_id)
    assert health["state"] == "refresh_failing"
    assert health["refresh_failing"]["attempts"] >= 3
    assert health["refresh_failing"]["error_class"] == "upstream_unavailable"
    assert health["refresh_failing"]["since"] == since.isoformat(timespec="seconds")
    admin = admin_api(upstream, db, unique)
    answer = admin.get("/upstream/grants")
    assert answer.status_code == 200, answer.text
    [shown] = [g for g in answer.json()["grants"] if g["credential_id"] == credential_id]
    assert shown["state"] == "refresh_failing" and shown["branches"] == [branch_id]
    assert answer.json()["counts"]["refresh_failing"] >= 1
    assert "refresh_token" not in answer.text and original_refresh not in answer.text
    wait_for(lambda: gauge_matches_database(upstream, db), what="the health gauge")
    assert gauge(upstream)[("google", "refresh_failing")] >= 1

    google.refresh_mode = "ok"
    wait_for(lambda: grant(db, branch_id).refresh_failures == 0, timeout=3 * BACKOFF_MAX)
    recovered = grant(db, branch_id)
    assert recovered.refresh_failing_since is None and recovered.next_refresh_at is None
    assert listed(upstream, credential_id)["state"] == "ok"
    assert listed(upstream, credential_id)["refresh_failing"] is None
    assert outbox_events(db, f"upstream_grant:{credential_id}") == [
        "upstream.refresh_failing",  # once, at the threshold (2), not per failure
        "upstream.recovered",
    ]
    wait_for(lambda: gauge_matches_database(upstream, db), what="the health gauge")


def test_needs_consent_is_shown_by_cli_admin_api_and_metrics(upstream, db, google, unique):
    branch_id = unique("consent")
    connect_branch(upstream, db, google, branch_id)
    credential_id = credential_of(db, branch_id)["id"]
    google.grants[google.issued_refresh_tokens[-1]].revoked = True
    make_due(db, branch_id)
    wait_for(lambda: credential_of(db, branch_id)["needs_consent"], what="needs_consent")

    health = status_health(upstream, branch_id)
    assert health["state"] == "needs_consent"
    assert health["next_refresh_at"] is None  # nothing more to try: an admin reconnects
    done = cli(upstream, "branches", "status", branch_id)
    assert "NEEDS_CONSENT" in done.stdout
    assert listed(upstream, credential_id)["consent_error"]
    answer = admin_api(upstream, db, unique).get("/upstream/grants", params={"provider": "google"})
    [shown] = [g for g in answer.json()["grants"] if g["credential_id"] == credential_id]
    assert shown["state"] == "needs_consent"
    wait_for(lambda: gauge_matches_database(upstream, db), what="the health gauge")
    assert gauge(upstream)[("google", "needs_consent")] >= 1

    # a new consent makes it ok again, with its next refresh ahead of expiry
    connect_branch(upstream, db, google, branch_id)
    health = status_health(upstream, branch_id)
    assert health["state"] == "ok" and health["next_refresh_at"] is not None


def test_admin_grants_listing_refuses_an_unknown_provider(upstream, db, unique):
    answer = admin_api(upstream, db, unique).get("/upstream/grants", params={"provider": "nope"})
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"
