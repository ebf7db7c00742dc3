"""Freshness of brokered upstream tokens (DESIGN.md "Upstream brokering" 3): a token
near expiry is refreshed at the provider first (RFC 6749 §6), once for concurrent
exchanges (row lock), with the provider's answers handled as Google's docs say.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

from oauth2_server.storage.branches import grant_branch
from tests.conftest import skip_unless_postgresql
from tests.fake_google import (
    Account,
    connect_branch,
    credential_of,
    credential_rows,
    decrypt_stored,
    exchange,
    exchange_client,
    wait_refresh_settled,
)
from tests.upstream_worker_helpers import grant, make_due, refreshes_by_account, wait_for

# Extra settings for this module's server (read by the `upstream` fixture in conftest.py).
# The refresh cap equals the caller's deadline here: a refresh that times out for its
# caller is also abandoned (tests/test_upstream_faults.py covers a longer cap).
UPSTREAM_ENV = {
    "OAUTH2_UPSTREAM_TIMEOUT": "2",
    "OAUTH2_UPSTREAM_REFRESH_CAP": "2",
    "PROVIDERS": ("google", "microsoft"),
}


def stale(upstream, db, google, branch_id, **kwargs):
    """Connect `branch_id` with a token 2 minutes from expiry; a client that may use it."""
    connect_branch(upstream, db, google, branch_id, expires_in=120, **kwargs)
    client_id, secret = exchange_client(db, [branch_id], scope="upstream:google upstream:microsoft")
    return client_id, secret, upstream.client_credentials_token(client_id, secret)


def test_near_expiry_token_is_refreshed_once_before_it_is_returned(upstream, db, google, unique):
    """RFC 6749 §6 refresh when < OAUTH2_UPSTREAM_MIN_TTL (300 s) is left."""
    branch_id = unique("near")
    client_id, secret, subject = stale(upstream, db, google, branch_id)
    old_token = google.issued_access_tokens[-1]

    first = exchange(upstream, client_id, secret, subject, branch_id)
    assert first.status_code == 200, first.text
    assert google.refresh_calls == 1
    assert first.json()["access_token"] == google.issued_access_tokens[-1] != old_token
    assert first.json()["expires_in"] >= 300

    second = exchange(upstream, client_id, secret, subject, branch_id)
    assert second.json()["access_token"] == first.json()["access_token"]
    assert google.refresh_calls == 1
    stored = credential_of(db, branch_id)
    assert stored["last_refreshed_at"] is not None
    assert (
        db.count(
            "oauth2_token_logs", "action = 'upstream_refreshed' AND branch_id = :b", b=branch_id
        )
        == 1
    )


def test_refresh_without_a_new_refresh_token_keeps_the_stored_one(upstream, db, google, unique):
    """Google's refresh answers usually carry no refresh_token: never overwrite with null."""
    branch_id = unique("keep")
    client_id, secret, subject = stale(upstream, db, google, branch_id)
    original = decrypt_stored(db.keys, credential_of(db, branch_id), "refresh")
    assert exchange(upstream, client_id, secret, subject, branch_id).status_code == 200
    assert google.refresh_calls == 1
    assert decrypt_stored(db.keys, credential_of(db, branch_id), "refresh") == original


def test_rotated_refresh_token_is_stored_microsoft(upstream, db, google, unique):
    """Microsoft identity platform v2 rotates refresh tokens on every use: store the new one
    in the refresh's transaction (the old one no longer works)."""
    branch_id = unique("ms")
    google.rotate_refresh_tokens = True
    connect_branch(upstream, db, google, branch_id, expires_in=120, provider="microsoft")
    client_id, secret = exchange_client(db, [branch_id], scope="upstream:microsoft")
    subject = upstream.client_credentials_token(client_id, secret)
    original = decrypt_stored(
        db.keys, credential_of(db, branch_id, "microsoft"), "refresh", "microsoft"
    )

    response = exchange(upstream, client_id, secret, subject, branch_id, audience="microsoft")
    assert response.status_code == 200, response.text
    stored = decrypt_stored(
        db.keys, credential_of(db, branch_id, "microsoft"), "refresh", "microsoft"
    )
    assert stored != original
    assert stored == google.issued_refresh_tokens[-1]


def test_concurrent_exchanges_cause_exactly_one_upstream_refresh(
    upstream, start_server, db, google, unique
):
    """20 concurrent exchanges for one near-expiry branch, across two server processes:
    one upstream refresh (row lock, expiry re-checked under it); all get the new token."""
    # Same issuer: one deployment behind a load balancer, two processes.
    second = start_server(
        OAUTH2_ISSUER=upstream.env["OAUTH2_ISSUER"], OAUTH2_UPSTREAM_TIMEOUT="5", **google.env()
    )
    servers = [upstream, second]
    warm_id, race_id = unique("warm"), unique("race")
    # Another Google account: branches of one account share one grant (and its token).
    connect_branch(
        upstream,
        db,
        google,
        warm_id,
        account=Account("200000000000000000002", "warm@branch.example"),
    )
    client_id, secret, subject = stale(upstream, db, google, race_id)
    with db.session() as session:
        grant_branch(session, client_id, warm_id)

    def burst(branch_id):
        barrier = threading.Barrier(20)

        def one(index):
            barrier.wait()
            return exchange(servers[index % 2], client_id, secret, subject, branch_id)

        with ThreadPoolExecutor(20) as pool:
            return list(pool.map(one, range(20)))

    # Warm both processes (secret cache, statements, pool connections), so that both
    # really race for the near-expiry grant below.
    assert [r.status_code for r in burst(warm_id)] == [200] * 20
    assert google.refresh_calls == 0
    google.refresh_delay = 0.7  # hold the refresh open (< the 2 s timeout) while others pile up

    responses = burst(race_id)

    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses]
    assert google.refresh_calls == 1
    tokens = {r.json()["access_token"] for r in responses}
    assert tokens == {google.issued_access_tokens[-1]}
    assert all(r.json()["expires_in"] >= 300 for r in responses)
    assert db.count("oauth2_token_logs", "action = 'exchanged' AND branch_id = :b", b=race_id) == 20


def test_refused_refresh_marks_the_branch_as_needing_consent(upstream, db, google, unique):
    """DESIGN.md: any invalid_grant on refresh means reconnect; RFC 8693 §2.2.2 invalid_grant
    naming the branch. The mark is committed although the request fails."""
    branch_id = unique("refused")
    client_id, secret, subject = stale(upstream, db, google, branch_id)
    before = credential_of(db, branch_id)
    google.refresh_mode = "invalid_grant"

    response = exchange(upstream, client_id, secret, subject, branch_id)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_grant"
    assert branch_id in body["error_description"]
    assert "reconnect" in body["error_description"]
    after = credential_of(db, branch_id)
    assert after["needs_consent"] is True
    assert (after["access"], after["refresh"]) == (before["access"], before["refresh"])
    assert (
        db.count(
            "oauth2_token_logs",
            "action = 'upstream_refresh_failed' AND branch_id = :b",
            b=branch_id,
        )
        == 1
    )

    # Later exchanges fail at once, without asking the provider again.
    again = exchange(upstream, client_id, secret, subject, branch_id)
    assert again.json()["error"] == "invalid_grant"
    assert google.refresh_calls == 1

    # A new consent clears the mark.
    google.refresh_mode = "ok"
    connect_branch(upstream, db, google, branch_id)
    assert credential_of(db, branch_id)["needs_consent"] is False
    assert exchange(upstream, client_id, secret, subject, branch_id).status_code == 200


@pytest.mark.parametrize("mode", ["timeout", "error500"])
def test_provider_timeout_or_5xx_is_temporarily_unavailable_and_changes_nothing(
    upstream, db, google, unique, mode
):
    """RFC 6749 §5.2 temporarily_unavailable with HTTP 503; stored grant untouched."""
    branch_id = unique(mode)
    client_id, secret, subject = stale(upstream, db, google, branch_id)
    before = credential_rows(db)
    google.refresh_mode = mode
    google.hang_seconds = 3.0  # > OAUTH2_UPSTREAM_TIMEOUT=2 = OAUTH2_UPSTREAM_REFRESH_CAP

    response = exchange(upstream, client_id, secret, subject, branch_id)
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "temporarily_unavailable"
    assert response.headers["cache-control"] == "no-store"
    wait_refresh_settled(db, branch_id)  # the abandoned refresh has ended at its cap
    assert credential_rows(db) == before
    assert credential_of(db, branch_id)["needs_consent"] is False

    google.refresh_mode = "ok"
    assert exchange(upstream, client_id, secret, subject, branch_id).status_code == 200


def test_upstream_refresh_token_is_never_returned_or_logged(upstream, db, google, unique):
    branch_id = unique("secret")
    client_id, secret, subject = stale(upstream, db, google, branch_id)
    refresh_token = google.issued_refresh_tokens[-1]
    google.refresh_mode = "invalid_grant"
    failed = exchange(upstream, client_id, secret, subject, branch_id)
    google.refresh_mode = "ok"
    connect_branch(upstream, db, google, branch_id, expires_in=120)
    refresh_token_2 = google.issued_refresh_tokens[-1]
    ok = exchange(upstream, client_id, secret, subject, branch_id)
    for response in (failed, ok):
        assert refresh_token not in response.text and refresh_token_2 not in response.text
    log = upstream.log()
    for token in (refresh_token, refresh_token_2, *google.issued_access_tokens):
        assert token not in log


def test_worker_process_refreshes_and_stops_on_sigterm(upstream, db, google, unique):
    """`oauth2-server worker` (compose's `worker` service; issue #14 item 1) as its own
    process, beside a server that does not refresh ahead (this module's): it refreshes
    a due grant and, on SIGTERM, finishes and exits 0."""
    branch_id = unique("process")
    connect_branch(upstream, db, google, branch_id)
    env = {**upstream.env, "OAUTH2_UPSTREAM_REFRESH_INTERVAL": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "oauth2_server", "worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        make_due(db, branch_id)
        wait_for(lambda: credential_of(db, branch_id)["last_refreshed_at"], timeout=30)
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, output
    assert refreshes_by_account(google)[credential_of(db, branch_id)["account_sub"]] == 1
    assert "upstream refresh worker: {'ok': " in output  # it was this process


def test_worker_refreshes_at_most_its_concurrency_at_once(upstream, db, google, unique):
    """Bounded concurrency (issue #14 item 1): `oauth2-server worker --once` with
    OAUTH2_UPSTREAM_REFRESH_CONCURRENCY=2 and four due grants refreshes two at a time,
    so with a provider taking 1 s per refresh the four finish in two rounds, not one."""
    branches = [unique("bounded") for _ in range(4)]
    for branch_id in branches:
        connect_branch(upstream, db, google, branch_id)
        make_due(db, branch_id)
    google.refresh_delay = 1.0
    env = {**upstream.env, "OAUTH2_UPSTREAM_REFRESH_CONCURRENCY": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "oauth2_server", "worker", "--once", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    finished = sorted(grant(db, branch_id).last_refreshed_at for branch_id in branches)
    assert all(finished), finished
    assert (finished[-1] - finished[0]).total_seconds() >= 0.8, finished  # two rounds


def test_an_exchange_meeting_a_locked_grant_gives_up_at_its_deadline(upstream, db, google, unique):
    """PostgreSQL: another transaction holds the grant's row (an admin's change, another
    instance). The refresh's claim waits for the lock at most the caller's deadline
    (`lock_timeout`, issue #14 item 5): the exchange answers 503 in time, and its refresh
    gives up rather than queueing for the lock and calling the provider once it is free."""
    skip_unless_postgresql(db)
    branch_id = unique("locked")
    client_id, secret, subject = stale(upstream, db, google, branch_id)
    credential_id = credential_of(db, branch_id)["id"]
    with db.engine.connect() as holder, holder.begin():
        holder.execute(
            text("SELECT id FROM oauth2_upstream_credentials WHERE id = :c FOR UPDATE"),
            {"c": credential_id},
        )
        started = time.monotonic()
        response = exchange(upstream, client_id, secret, subject, branch_id)
        elapsed = time.monotonic() - started
        time.sleep(1.5)  # held past the claim's lock_timeout (2 s after it began)
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "temporarily_unavailable"
    assert elapsed < 2 + 1.5
    time.sleep(1.0)  # a claim still queued for the lock would now call the provider
    assert google.refresh_calls == 0
