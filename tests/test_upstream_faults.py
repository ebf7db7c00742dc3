"""The broker survives its provider's faults (issue #14 item 5; README "Upstream provider
faults"), each reproduced with the stand-in provider on loopback: a slow body, a hang,
an answer after the deadline carrying a rotated refresh token, a worker killed
mid-refresh, a narrowed scope, a short lifetime; and RFC 8693 §2.1's subject token that
must itself carry `upstream:<provider>`.

Deadlines here: a caller waits OAUTH2_UPSTREAM_TIMEOUT (1.5 s); a refresh runs on to
OAUTH2_UPSTREAM_REFRESH_CAP (4 s) and stores what it gets.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import update

from oauth2_server.db.models import UpstreamCredential
from oauth2_server.storage import utcnow
from tests.admin_helpers import admin_api
from tests.fake_google import (
    BUSINESS_MANAGE,
    FaultyProvider,
    cli,
    connect_branch,
    credential_of,
    decrypt_stored,
    exchange,
    exchange_client,
    refresh_mark,
    wait_refresh_settled,
)

TIMEOUT, CAP = 1.5, 4.0
UPSTREAM_ENV = {
    "OAUTH2_UPSTREAM_TIMEOUT": str(TIMEOUT),
    "OAUTH2_UPSTREAM_REFRESH_CAP": str(CAP),
    "PROVIDERS": ("google", "microsoft"),
}
SLACK = 1.5  # seconds of scheduling, HTTP and database time on a shared 2-core machine


@pytest.fixture(scope="module")
def google():
    """This module's stand-in provider: FakeGoogle plus a slow body and a narrowed scope
    (overrides conftest's `google`, so `upstream` points at it)."""
    fake = FaultyProvider().start()
    yield fake
    fake.stop()


def stale(server, db, google, branch_id, provider="google", **kwargs):
    """Connect `branch_id` with an ordinary token 2 minutes from expiry; a client that may
    use it and a subject token carrying `upstream:<provider>`."""
    connect_branch(server, db, google, branch_id, expires_in=120, provider=provider, **kwargs)
    client_id, secret = exchange_client(db, [branch_id], scope=f"upstream:{provider}")
    return client_id, secret, server.client_credentials_token(client_id, secret)


def timed(call):
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def concurrently(count, call):
    """`count` calls of `call(index)` released together; [(response, seconds)]."""
    barrier = threading.Barrier(count)

    def one(index):
        barrier.wait()
        return timed(lambda: call(index))

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def status_of(server, branch_id):
    result = cli(server, "branches", "status", branch_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["branches"][0]


# -- one overall deadline per provider call ---------------------------------------------


def test_slow_body_is_cut_at_the_callers_deadline_and_the_refresh_at_its_cap(
    upstream, db, google, unique
):
    """A provider trickling its answer 1 byte every 0.5 s once held an exchange (and the
    grant's lock) 44.5 s: httpx's timeout is per read. Now the caller hears 503 at its
    deadline, so does a second exchange meanwhile, and the refresh ends at its cap."""
    branch_id = unique("trickle")
    client_id, secret, subject = stale(upstream, db, google, branch_id)
    before = credential_of(db, branch_id)
    google.trickle_seconds = 0.5

    results = concurrently(2, lambda _: exchange(upstream, client_id, secret, subject, branch_id))
    claimed_at = time.monotonic()

    for response, seconds in results:
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "temporarily_unavailable"
        assert seconds < TIMEOUT + SLACK
    mark = wait_refresh_settled(db, branch_id, timeout=CAP + SLACK)
    assert time.monotonic() - claimed_at < CAP + SLACK
    assert google.refresh_calls == 1
    assert "did not answer in time" in mark["last_refresh_error"]
    assert mark["refresh_failures"] == 1
    after = credential_of(db, branch_id)
    assert (after["access"], after["refresh"]) == (before["access"], before["refresh"])

    google.trickle_seconds = 0.0
    assert exchange(upstream, client_id, secret, subject, branch_id).status_code == 200
    assert refresh_mark(db, branch_id)["refresh_failures"] == 0


# -- waiters share the holder's outcome; nobody waits past the deadline ------------------


def test_provider_hang_answers_every_concurrent_exchange_within_one_deadline(
    upstream, start_server, db, google, unique
):
    """10 concurrent exchanges on two processes while the provider hangs: each answers 503
    within the deadline (not N x the timeout), and the provider is called once."""
    second = start_server(
        OAUTH2_ISSUER=upstream.env["OAUTH2_ISSUER"],
        **{k: v for k, v in upstream.env.items() if k.startswith("OAUTH2_UPSTREAM_")},
    )
    servers = [upstream, second]
    branch_id = unique("hang")
    client_id, secret, subject = stale(upstream, db, google, branch_id)
    google.refresh_mode, google.hang_seconds = "timeout", CAP + 2  # past the cap

    results = concurrently(
        10, lambda i: exchange(servers[i % 2], client_id, secret, subject, branch_id)
    )

    assert [r.status_code for r, _ in results] == [503] * 10, [r.text for r, _ in results]
    assert max(seconds for _, seconds in results) < TIMEOUT + SLACK
    mark = wait_refresh_settled(db, branch_id, timeout=CAP + SLACK)
    assert mark["refresh_failures"] == 1
    assert google.refresh_calls == 1


def test_waiters_share_the_holders_failure_instead_of_calling_again(
    upstream, start_server, db, google, unique
):
    """The provider fails (HTTP 500) after 0.5 s: every exchange that waited for that
    refresh, in either process, gets its failure; the provider is called once."""
    second = start_server(
        OAUTH2_ISSUER=upstream.env["OAUTH2_ISSUER"],
        **{k: v for k, v in upstream.env.items() if k.startswith("OAUTH2_UPSTREAM_")},
    )
    servers = [upstream, second]
    branch_id = unique("share")
    client_id, secret, subject = stale(upstream, db, google, branch_id)
    google.refresh_mode, google.refresh_delay = "error500", 0.5

    results = concurrently(
        10, lambda i: exchange(servers[i % 2], client_id, secret, subject, branch_id)
    )

    assert [r.status_code for r, _ in results] == [503] * 10, [r.text for r, _ in results]
    described = [r.json()["error_description"] for r, _ in results]
    assert all("HTTP 500" in d for d in described), described
    assert google.refresh_calls == 1
    assert refresh_mark(db, branch_id)["refresh_failures"] == 1


# -- an answer after the deadline is stored ---------------------------------------------


def test_answer_after_the_deadline_with_a_rotated_refresh_token_is_stored(
    upstream, db, google, unique
):
    """Microsoft rotates refresh tokens. Its answer arrives after the caller's deadline:
    the caller gets 503, the refresh goes on and stores the new refresh token, so the
    grant is not bricked; the next exchange uses the stored token without a new call."""
    branch_id = unique("late")
    google.rotate_refresh_tokens = True
    client_id, secret, subject = stale(upstream, db, google, branch_id, provider="microsoft")
    google.refresh_delay = TIMEOUT + 1.0  # after the deadline, before the cap

    late = exchange(upstream, client_id, secret, subject, branch_id, audience="microsoft")
    assert late.status_code == 503, late.text
    assert "it goes on and its answer will be stored" in late.json()["error_description"]

    wait_refresh_settled(db, branch_id, "microsoft", timeout=CAP + SLACK)
    stored = credential_of(db, branch_id, "microsoft")
    assert (
        decrypt_stored(db.keys, stored, "refresh", "microsoft")
        == (google.issued_refresh_tokens[-1])
    )
    assert stored["needs_consent"] is False
    logged = db.rows(
        "SELECT details FROM oauth2_token_logs WHERE action = 'upstream_refreshed' "
        "AND branch_id = :b",
        b=branch_id,
    )
    assert len(logged) == 1
    details = logged[0][0] if isinstance(logged[0][0], dict) else json.loads(logged[0][0])
    assert details["after_caller_deadline"] is True
    assert details["refresh_token_rotated"] is True

    google.refresh_delay = 0.0
    again = exchange(upstream, client_id, secret, subject, branch_id, audience="microsoft")
    assert again.status_code == 200, again.text
    assert again.json()["access_token"] == google.issued_access_tokens[-1]
    assert google.refresh_calls == 1


# -- a worker killed mid-refresh ---------------------------------------------------------

# A server of its own, killed with SIGKILL, and its successor: one deployment with the
# module's server (one issuer; branches connect through the module's server, whose
# callback the issuer names); a short cap so the lease (cap + 5 s) passes soon.
KILLED_ENV = {"OAUTH2_UPSTREAM_TIMEOUT": "1", "OAUTH2_UPSTREAM_REFRESH_CAP": "1"}


def wait_out_lease(db, branch_id, provider="google"):
    """Sleep until the refresh mark's lease (the dead refresher's) is over."""
    lease_until = refresh_mark(db, branch_id, provider)["refresh_lease_until"]
    assert lease_until is not None
    if isinstance(lease_until, str):  # SQLite through a plain text query
        lease_until = datetime.fromisoformat(lease_until).replace(tzinfo=UTC)
    time.sleep(max(0.0, (lease_until - utcnow()).total_seconds()) + 0.3)


def kill_mid_refresh(server, client_id, secret, subject, branch_id, google, **params):
    """Start an exchange, wait until the provider has the refresh call, SIGKILL the
    server process (by its PID) before the answer comes."""
    worker = threading.Thread(
        target=lambda: _quietly(exchange, server, client_id, secret, subject, branch_id, **params)
    )
    worker.start()
    deadline = time.monotonic() + 10
    while google.refresh_calls == 0:
        assert time.monotonic() < deadline, "the refresh never reached the provider"
        time.sleep(0.02)
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)
    worker.join(timeout=30)


def _quietly(call, *args, **kwargs):
    with contextlib.suppress(requests.RequestException):  # killed under it: expected
        call(*args, **kwargs)


def test_worker_killed_mid_refresh_leaves_a_visible_mark_and_a_restart_recovers(
    upstream, start_server, db, google, unique
):
    """The refresh's process dies while the provider holds the call. The grant shows the
    refresh in progress, then interrupted (`branches status`); a restarted server waits
    out the lease, takes the refresh over and stores fresh tokens (Google keeps refresh
    tokens valid, so nothing is lost)."""
    env = {
        **google.env(),
        **KILLED_ENV,
        "OAUTH2_UPSTREAM_REFRESH_CAP": "20",  # a lease of 25 s: time to look at the mark
        "OAUTH2_ISSUER": upstream.env["OAUTH2_ISSUER"],
    }
    doomed = start_server(**env)
    branch_id = unique("killed")
    client_id, secret, subject = stale(upstream, db, google, branch_id)
    before = credential_of(db, branch_id)
    google.refresh_mode, google.hang_seconds = "timeout", 30

    kill_mid_refresh(doomed, client_id, secret, subject, branch_id, google)
    google.refresh_mode = "ok"

    # Within the lease nobody else calls the provider: a caller waits its deadline.
    busy = exchange(upstream, client_id, secret, subject, branch_id)
    assert busy.status_code == 503, busy.text
    described = busy.json()["error_description"]
    assert "in progress since" in described or "did not finish" in described, described
    assert google.refresh_calls == 1
    shown = status_of(upstream, branch_id)
    assert shown["refresh"] == "in_progress"
    assert shown["refresh_started_at"] is not None
    assert credential_of(db, branch_id)["refresh"] == before["refresh"]
    text = cli(upstream, "branches", "status", branch_id)
    assert "refresh in progress since" in text.stdout

    restarted = start_server(**env)
    assert refresh_mark(db, branch_id)["refresh_lease_until"] is not None
    wait_out_lease(db, branch_id)
    shown = status_of(upstream, branch_id)
    assert shown["refresh"] == "interrupted"
    assert "REFRESH INTERRUPTED" in cli(upstream, "branches", "status", branch_id).stdout
    admin = admin_api(upstream, db, unique)  # the admin API shows the same mark
    (connection,) = admin.get(f"/branches/{branch_id}").json()["connections"]
    assert connection["refresh"] == "interrupted" and connection["refresh_started_at"]

    recovered = exchange(restarted, client_id, secret, subject, branch_id)
    assert recovered.status_code == 200, recovered.text
    assert google.refresh_calls == 2
    assert status_of(upstream, branch_id)["refresh"] is None
    assert (
        db.count(
            "oauth2_token_logs",
            "action = 'upstream_refreshed' AND branch_id = :b "
            "AND CAST(details AS TEXT) LIKE '%took_over_refresh_started_at%'",
            b=branch_id,
        )
        == 1
    )


def test_worker_killed_mid_refresh_of_a_rotating_provider_is_no_silent_brick(
    upstream, start_server, db, google, unique
):
    """Microsoft rotates: the answer the dead process never stored carried the only
    valid refresh token. The grant is marked as needing consent with a reason naming the
    interrupted refresh (status and the exchange error say so), and a new consent heals
    it."""
    env = {**google.env("microsoft"), **KILLED_ENV, "OAUTH2_ISSUER": upstream.env["OAUTH2_ISSUER"]}
    doomed = start_server(**env)
    branch_id = unique("killed-ms")
    google.rotate_refresh_tokens = True
    client_id, secret, subject = stale(upstream, db, google, branch_id, provider="microsoft")
    google.refresh_mode, google.hang_seconds = "timeout", 0.5  # then rotates, unheard

    kill_mid_refresh(doomed, client_id, secret, subject, branch_id, google, audience="microsoft")
    wait_out_lease(db, branch_id, "microsoft")
    assert status_of(upstream, branch_id)["refresh"] == "interrupted"

    google.refresh_mode = "ok"
    restarted = start_server(**env)
    refused = exchange(restarted, client_id, secret, subject, branch_id, audience="microsoft")
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "invalid_grant"
    assert "interrupted" in refused.json()["error_description"]
    shown = status_of(upstream, branch_id)
    assert shown["needs_consent"] is True
    assert "interrupted" in shown["consent_error"]
    assert shown["refresh"] is None

    connect_branch(upstream, db, google, branch_id, provider="microsoft")
    healed = exchange(restarted, client_id, secret, subject, branch_id, audience="microsoft")
    assert healed.status_code == 200, healed.text


# -- narrowed scope ---------------------------------------------------------------------


def test_refresh_with_narrowed_scope_marks_the_grant_as_needing_consent(
    upstream, db, google, unique
):
    """The owner removed business.manage: the refresh answer lacks it. The grant needs
    consent (with the reason), audited; the exchange fails naming the branch; the new
    tokens are kept all the same (a rotated refresh token must not be lost)."""
    branch_id = unique("narrow")
    client_id, secret, subject = stale(upstream, db, google, branch_id)
    google.refresh_scope = "openid email"

    response = exchange(upstream, client_id, secret, subject, branch_id)

    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_grant"
    assert branch_id in body["error_description"]
    assert BUSINESS_MANAGE in body["error_description"]
    stored = credential_of(db, branch_id)
    assert stored["needs_consent"] is True
    assert BUSINESS_MANAGE in stored["consent_error"]
    assert stored["scope"] == "openid email"
    assert decrypt_stored(db.keys, stored, "access") == google.issued_access_tokens[-1]
    flagged = db.rows(
        "SELECT flags FROM oauth2_token_logs WHERE action = 'upstream_refresh_failed' "
        "AND branch_id = :b",
        b=branch_id,
    )
    assert len(flagged) == 1 and "scope_narrowed" in str(flagged[0][0])
    assert status_of(upstream, branch_id)["needs_consent"] is True

    again = exchange(upstream, client_id, secret, subject, branch_id)
    assert again.json()["error"] == "invalid_grant"
    assert google.refresh_calls == 1


# -- short provider lifetime -------------------------------------------------------------


def set_expiry(db, branch_id, seconds_left, lifetime):
    """Make the branch's stored token one of `lifetime` seconds with `seconds_left`."""
    credential_id = credential_of(db, branch_id)["id"]
    expires_at = utcnow() + timedelta(seconds=seconds_left)
    with db.session() as session:
        session.execute(
            update(UpstreamCredential)
            .where(UpstreamCredential.id == credential_id)
            .values(
                access_expires_at=expires_at,
                access_issued_at=expires_at - timedelta(seconds=lifetime),
            )
        )


def test_short_provider_lifetime_hands_out_what_exists_and_refreshes_once_per_half_life(
    upstream, db, google, unique
):
    """Tokens living 60 s (< OAUTH2_UPSTREAM_MIN_TTL, 300 s) were refreshed on every
    exchange. Now they are handed out with their true remaining life, and refreshed only
    once half the lifetime is spent."""
    branch_id = unique("short")
    google.expires_in = 60
    connect_branch(upstream, db, google, branch_id, expires_in=60, lifetime=None)
    client_id, secret = exchange_client(db, [branch_id], scope="upstream:google")
    subject = upstream.client_credentials_token(client_id, secret)

    for _ in range(5):
        response = exchange(upstream, client_id, secret, subject, branch_id)
        assert response.status_code == 200, response.text
        assert 30 <= response.json()["expires_in"] <= 60
    assert google.refresh_calls == 0

    set_expiry(db, branch_id, seconds_left=20, lifetime=60)  # two thirds spent
    for _ in range(5):
        response = exchange(upstream, client_id, secret, subject, branch_id)
        assert response.status_code == 200, response.text
        assert response.json()["expires_in"] >= 30
    assert google.refresh_calls == 1
    assert response.json()["access_token"] == google.issued_access_tokens[-1]


# -- the subject token's own scope (RFC 8693 §2.1, §2.2.2) ------------------------------


def test_subject_token_must_itself_carry_the_upstream_scope(upstream, db, google, unique):
    """A client registered for upstream:google presenting a token minted with scope=read:
    invalid_request (RFC 8693 §2.2.2, an unacceptable subject_token), nothing read from
    the provider; the same client's token with upstream:google works."""
    branch_id = unique("scoped")
    connect_branch(upstream, db, google, branch_id)
    client_id, secret = exchange_client(db, [branch_id], scope="upstream:google read")

    narrow = upstream.client_credentials_token(client_id, secret, scope="read")
    refused = exchange(upstream, client_id, secret, narrow, branch_id)
    assert refused.status_code == 400, refused.text
    body = refused.json()
    assert body["error"] == "invalid_request"
    assert "upstream:google" in body["error_description"]
    assert "2.2.2" in body["error_description"]
    assert (
        db.count("oauth2_token_logs", "action = 'exchanged' AND branch_id = :b", b=branch_id) == 0
    )

    scoped = upstream.client_credentials_token(client_id, secret, scope="upstream:google")
    assert exchange(upstream, client_id, secret, scoped, branch_id).status_code == 200
