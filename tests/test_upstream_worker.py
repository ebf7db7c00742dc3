"""The proactive upstream refresh worker (issue #14 item 1), against the stand-in provider:
grants are refreshed before any service asks, once per grant across instances, through
the on-demand path's own writes (refresh tokens kept or rotated, never lost), and a grant
revoked at the provider is marked needs-consent within one cycle, with its webhook event.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.conftest import skip_unless_postgresql
from tests.fake_google import (
    cli,
    connect_branch,
    credential_of,
    decrypt_stored,
    exchange,
    exchange_client,
)
from tests.upstream_worker_helpers import (
    grant,
    make_due,
    outbox_events,
    refreshes_by_account,
    set_grant,
    wait_for,
)
from tests.webhook_receiver import SECRET, Receiver, new_receiver

INTERVAL = 1.0  # OAUTH2_UPSTREAM_REFRESH_INTERVAL of this module's servers (±20 %)
WORKER_ENV = {
    "OAUTH2_UPSTREAM_REFRESH_WORKER": "true",
    "OAUTH2_UPSTREAM_REFRESH_INTERVAL": str(INTERVAL),
    "OAUTH2_UPSTREAM_REFRESH_AHEAD": "600",
}
# A loopback webhook receiver for this module's server (issue #14 item 3): it verifies
# each delivery's Standard Webhooks signature with its own HMAC code.
RECEIVER = new_receiver()
# Read by the `upstream` fixture in conftest.py: one server running the worker.
UPSTREAM_ENV = {
    **WORKER_ENV,
    "PROVIDERS": ("google", "microsoft"),
    "OAUTH2_WEBHOOK_URL": RECEIVER.url,
    "OAUTH2_WEBHOOK_SECRET": SECRET,
    "OAUTH2_WEBHOOK_POLL_INTERVAL": "0.5",
}


@pytest.fixture(scope="module", autouse=True)
def _receiver() -> Iterator[Receiver]:
    RECEIVER.start()
    yield RECEIVER
    RECEIVER.stop()


def test_worker_refreshes_a_token_expiring_in_5_minutes_with_no_exchange(
    upstream, db, google, unique
):
    """Issue #14 item 1: refreshed before any service asks; Google sends no new refresh
    token, so the stored one is kept (never overwritten with null)."""
    branch_id = unique("warm")
    connect_branch(upstream, db, google, branch_id, expires_in=300)
    before = credential_of(db, branch_id)
    expired_at = grant(db, branch_id).access_expires_at
    original_refresh = decrypt_stored(db.keys, before, "refresh")

    after = wait_for(
        lambda: (row := credential_of(db, branch_id))["last_refreshed_at"] and row,
        what="the worker's refresh",
    )
    sub = before["account_sub"]
    assert refreshes_by_account(google)[sub] == 1
    assert grant(db, branch_id).access_expires_at > expired_at + timedelta(seconds=3000)
    assert decrypt_stored(db.keys, after, "refresh") == original_refresh
    rows = db.rows(
        "SELECT details FROM oauth2_token_logs WHERE action = 'upstream_refreshed' "
        "AND CAST(details AS TEXT) LIKE :c",
        c=f"%{before['id']}%",
    )
    assert len(rows) == 1 and "refresh_worker" in str(rows[0][0])

    # An exchange now finds a warm token: no provider call.
    client_id, secret = exchange_client(db, [branch_id])
    subject = upstream.client_credentials_token(client_id, secret)
    assert exchange(upstream, client_id, secret, subject, branch_id).status_code == 200
    time.sleep(3 * INTERVAL)  # a few more cycles: nothing is due
    assert refreshes_by_account(google)[sub] == 1


def test_worker_leaves_tokens_with_more_than_refresh_ahead_left(upstream, db, google, unique):
    branch_id = unique("later")
    connect_branch(upstream, db, google, branch_id, expires_in=1200)  # 20 min > 600 s ahead
    time.sleep(3 * INTERVAL)
    assert credential_of(db, branch_id)["last_refreshed_at"] is None
    assert refreshes_by_account(google)[credential_of(db, branch_id)["account_sub"]] == 0


def test_worker_stores_a_rotated_refresh_token_microsoft(upstream, db, google, unique):
    """Microsoft rotates refresh tokens on every use: the worker stores the new one."""
    branch_id = unique("ms")
    connect_branch(upstream, db, google, branch_id, provider="microsoft")
    original = decrypt_stored(
        db.keys, credential_of(db, branch_id, "microsoft"), "refresh", "microsoft"
    )
    google.rotate_refresh_tokens = True
    make_due(db, branch_id, provider="microsoft")

    row = wait_for(
        lambda: (r := credential_of(db, branch_id, "microsoft"))["last_refreshed_at"] and r,
        what="the worker's refresh",
    )
    stored = decrypt_stored(db.keys, row, "refresh", "microsoft")
    assert stored != original
    assert stored == google.issued_refresh_tokens[-1]


def needs_consent_deliveries(branch_id: str) -> list:
    """The `branch.needs_consent` deliveries of `branch_id` the receiver accepted, once
    there is at least one."""
    return wait_for(
        lambda: [
            d
            for d in RECEIVER.accepted()
            if d.event.get("type") == "branch.needs_consent"
            and d.event["data"].get("branch_id") == branch_id
        ],
        what="branch.needs_consent at the receiver",
    )


def test_grant_revoked_at_the_provider_needs_consent_within_one_cycle(upstream, db, google, unique):
    """`invalid_grant` marks the grant at once: health `needs_consent`, the refresh token
    kept (an admin sees it; nothing is deleted), a `branch.needs_consent` event in the
    outbox in the same transaction, and no further provider calls."""
    branch_id = unique("revoked")
    connect_branch(upstream, db, google, branch_id)
    refresh_token = google.issued_refresh_tokens[-1]
    before = credential_of(db, branch_id)
    google.grants[refresh_token].revoked = True  # the owner removed access at Google
    make_due(db, branch_id)
    made_due = time.monotonic()

    wait_for(lambda: credential_of(db, branch_id)["needs_consent"], what="needs_consent")
    assert time.monotonic() - made_due < INTERVAL * 1.2 + 2.0  # one cycle and its work
    after = credential_of(db, branch_id)
    assert after["refresh"] == before["refresh"]
    assert "refused" in after["consent_error"]
    assert outbox_events(db, f"branch:{branch_id}") == ["branch.needs_consent"]
    arrived = needs_consent_deliveries(branch_id)
    assert len(arrived) == 1 and arrived[0].valid  # signed per Standard Webhooks
    sub = before["account_sub"]
    calls = refreshes_by_account(google)[sub]
    time.sleep(3 * INTERVAL)
    assert refreshes_by_account(google)[sub] == calls  # needs consent: not tried again


def test_two_instances_refresh_each_grant_exactly_once(
    upstream, module_instances, db, google, unique
):
    """Two instances with 2 workers each, all running the worker (PostgreSQL): the claim
    (FOR UPDATE SKIP LOCKED, then the refresh mark) gives each grant to one refresher,
    even while a slow provider keeps refreshes open across several cycles."""
    module_instances(**google.env(), **WORKER_ENV)  # 2 x 2 workers, with `upstream`: 5
    google.refresh_delay = 2.5 * INTERVAL  # every refresh spans 2-3 cycles of the others
    branches = [unique("pool") for _ in range(6)]
    for branch_id in branches:
        connect_branch(upstream, db, google, branch_id)
    subs = [credential_of(db, branch_id)["account_sub"] for branch_id in branches]
    for branch_id in branches:
        make_due(db, branch_id)

    wait_for(
        lambda: all(credential_of(db, b)["last_refreshed_at"] for b in branches),
        timeout=30,
        what="every grant refreshed",
    )
    time.sleep(4 * INTERVAL)
    counts = refreshes_by_account(google)
    assert [counts[sub] for sub in subs] == [1] * len(subs)


def test_worker_command_once_shares_grants_with_the_servers_worker(upstream, db, google, unique):
    """`oauth2-server worker --once` (one cycle of what compose's `worker` service runs)
    respects a grant's backoff, and racing the server's own worker (another process; on
    SQLite the single writer serialises their claims) refreshes a due grant once."""
    branch_id = unique("once")
    connect_branch(upstream, db, google, branch_id)
    set_grant(db, branch_id, next_refresh_at=datetime.now(UTC) + timedelta(hours=1))
    make_due(db, branch_id)
    held = cli(upstream, "worker", "--once", "--json")
    assert held.returncode == 0, held.stderr
    time.sleep(2 * INTERVAL)
    assert credential_of(db, branch_id)["last_refreshed_at"] is None  # backoff respected

    set_grant(db, branch_id, next_refresh_at=None)
    ran = cli(upstream, "worker", "--once", "--json")
    assert ran.returncode == 0, ran.stderr
    assert '"refreshed"' in ran.stdout
    wait_for(lambda: credential_of(db, branch_id)["last_refreshed_at"], what="the refresh")
    time.sleep(2 * INTERVAL)
    assert refreshes_by_account(google)[credential_of(db, branch_id)["account_sub"]] == 1


def test_a_grant_locked_elsewhere_does_not_stall_the_worker(upstream, db, google, unique):
    """PostgreSQL: the worker claims `FOR UPDATE SKIP LOCKED`, so a grant whose row another
    transaction holds (another instance's claim, an admin's change) is passed over and the
    other due grants are refreshed meanwhile, not queued behind it."""
    skip_unless_postgresql(db)
    locked_id, free_id = unique("locked"), unique("free")
    for branch_id in (locked_id, free_id):
        connect_branch(upstream, db, google, branch_id)
    # The locked grant becomes due (its backoff ends) only once the lock is held.
    make_due(db, locked_id, seconds_left=200)  # the soonest: first in the worker's order
    set_grant(db, locked_id, next_refresh_at=datetime.now(UTC) + timedelta(seconds=2))
    with db.engine.connect() as holder, holder.begin():
        holder.execute(
            text("SELECT id FROM oauth2_upstream_credentials WHERE id = :c FOR UPDATE"),
            {"c": credential_of(db, locked_id)["id"]},
        )
        time.sleep(2 + INTERVAL)  # the worker now meets the locked row in every cycle
        make_due(db, free_id, seconds_left=300)
        wait_for(
            lambda: credential_of(db, free_id)["last_refreshed_at"],
            timeout=3 * INTERVAL + 2,
            what="the unlocked grant's refresh",
        )
        assert credential_of(db, locked_id)["last_refreshed_at"] is None
    wait_for(lambda: credential_of(db, locked_id)["last_refreshed_at"], what="the locked one")


def test_an_exchange_during_the_workers_refresh_shares_its_outcome(upstream, db, google, unique):
    """Single flight with the on-demand path (issue #14 item 1): an exchange for a grant
    the worker is refreshing finds the worker's refresh mark, waits for that refresh and
    hands out its token; the provider is called once, by the worker."""
    branch_id = unique("shared")
    connect_branch(upstream, db, google, branch_id)
    client_id, secret = exchange_client(db, [branch_id])
    subject = upstream.client_credentials_token(client_id, secret)
    credential = credential_of(db, branch_id)
    google.refresh_delay = 2.0  # the worker's call is still open when the exchange comes
    make_due(db, branch_id, seconds_left=120)  # due for the worker and for an exchange

    wait_for(lambda: grant(db, branch_id).refresh_started_at, what="the worker's claim")
    response = exchange(upstream, client_id, secret, subject, branch_id)

    assert response.status_code == 200, response.text
    assert response.json()["access_token"] == google.issued_access_tokens[-1]
    assert refreshes_by_account(google)[credential["account_sub"]] == 1
    rows = db.rows(
        "SELECT details FROM oauth2_token_logs WHERE action = 'upstream_refreshed' "
        "AND CAST(details AS TEXT) LIKE :c",
        c=f"%{credential['id']}%",
    )
    assert len(rows) == 1 and "refresh_worker" in str(rows[0][0])


def test_worker_refresh_with_a_narrowed_scope_needs_consent_and_notifies(
    upstream, db, google, unique
):
    """Issue #14 item 5 under the worker: the owner removed business.manage, so the
    refresh answer lacks it. The grant needs consent naming the scope, the answer's tokens
    are stored all the same, and `branch.needs_consent` (reason `scope_narrowed`) reaches
    the receiver, signed."""
    branch_id = unique("narrowed")
    connect_branch(upstream, db, google, branch_id)
    google.grants[google.issued_refresh_tokens[-1]].scope = "openid email"
    make_due(db, branch_id)

    wait_for(lambda: credential_of(db, branch_id)["needs_consent"], what="needs_consent")
    after = credential_of(db, branch_id)
    assert "business.manage" in after["consent_error"]
    assert after["last_refreshed_at"] is not None and after["scope"] == "openid email"
    assert outbox_events(db, f"branch:{branch_id}") == ["branch.needs_consent"]
    arrived = needs_consent_deliveries(branch_id)
    assert len(arrived) == 1 and arrived[0].valid
    assert arrived[0].event["data"]["reason"] == "scope_narrowed"
