"""Connecting branches to Google (DESIGN.md "Upstream brokering" 1–2): the authorization
URL (RFC 6749 §4.1.1, RFC 7636 S256, offline access), the callback (single-use `state`,
RFC 6749 §10.12), one grant per Google account shared by branches, disconnecting
(RFC 7009 revocation with the last branch), and the CLI around it.
"""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.fake_google import (
    BUSINESS_MANAGE,
    Account,
    account_for,
    callback,
    cli,
    connect_branch,
    connection_url,
    credential_of,
    credential_rows,
    ensure_branch,
    exchange,
    exchange_client,
    follow_consent,
)
from tests.flows import query_of


def requests_get_html(location):
    """The callback as a browser gets it (HTML)."""
    return requests.get(location, timeout=30)


def assert_callback_refused(response, mentions, status=400):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] and mentions in body["error_description"], body
    assert response.headers["cache-control"] == "no-store"


# -- the connection, end to end -----------------------------------------------------------


def test_connect_flow_end_to_end_through_the_cli(upstream, db, google, unique):
    """`branches create|grant|connect|status` and the callback; the URL carries state,
    PKCE S256, access_type=offline, prompt=consent and the configured scopes."""
    branch_id = unique("cli")
    google.account = account_for(branch_id)
    client_id, secret = exchange_client(db, [])
    created = cli(
        upstream,
        "branches",
        "create",
        branch_id,
        "--name",
        "Main Street",
        "--contact-email",
        "manager@branch.example",
        "--google-location-id",
        "locations/42",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    granted = cli(upstream, "branches", "grant", branch_id, "--client", client_id)
    assert granted.returncode == 0, granted.stderr
    # Audited like the admin API: client_id is the acting admin (none from the CLI), the
    # client granted is named in details.
    ((acting, details),) = db.rows(
        "SELECT client_id, CAST(details AS TEXT) FROM oauth2_token_logs"
        " WHERE action = 'admin_branch_granted' AND branch_id = :b",
        b=branch_id,
    )
    assert acting is None and json.loads(details)["target_client_id"] == client_id

    started = cli(upstream, "branches", "connect", branch_id, "--provider", "google", "--json")
    assert started.returncode == 0, started.stderr
    url = json.loads(started.stdout)["authorization_url"]
    assert url.startswith(google.base_url + "/o/oauth2/v2/auth?")
    params = query_of(url)
    assert params["response_type"] == "code"
    assert params["client_id"] == google.client_id
    assert params["redirect_uri"] == upstream.base_url + "/upstream/google/callback"
    assert params["scope"].split() == ["openid", "email", BUSINESS_MANAGE]
    assert params["access_type"] == "offline" and params["prompt"] == "consent"
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert len(params["state"]) >= 43

    page = requests_get_html(follow_consent(url))
    assert page.status_code == 200 and "Branch connected" in page.text

    status = cli(upstream, "branches", "status", branch_id, "--json")
    assert status.returncode == 0, status.stderr
    [row] = json.loads(status.stdout)["branches"]
    assert row["provider"] == "google"
    assert row["account_email"] == f"{branch_id}@branch.example"
    assert BUSINESS_MANAGE in row["scope"]
    assert row["needs_consent"] is False and row["access_expires_at"]
    assert row["last_refreshed_at"] is None
    assert (
        db.count("oauth2_token_logs", "action = 'upstream_linked' AND branch_id = :b", b=branch_id)
        == 1
    )

    subject = upstream.client_credentials_token(client_id, secret)
    response = exchange(upstream, client_id, secret, subject, branch_id)
    assert response.status_code == 200, response.text
    assert response.json()["access_token"] == google.issued_access_tokens[-1]


def test_callback_stores_the_grant_under_the_account_sub(upstream, db, google, unique):
    """DESIGN.md: key the grant on the id_token/userinfo `sub`, not the email."""
    branch_id = unique("sub")
    account = Account("300000000000000000003", "someone@branch.example")
    body = connect_branch(upstream, db, google, branch_id, account=account)
    assert body["account_email"] == account.email
    stored = credential_of(db, branch_id)
    assert stored["account_sub"] == account.sub
    assert stored["account_email"] == account.email


def test_account_is_read_from_userinfo_without_an_id_token(upstream, db, google, unique):
    """OIDC Core §5.3 userinfo when the token response has no id_token."""
    branch_id = unique("userinfo")
    google.include_id_token = False
    info_account = Account("400000000000000000004", "info@branch.example")
    body = connect_branch(upstream, db, google, branch_id, account=info_account)
    assert body["account_email"] == "info@branch.example"
    assert credential_of(db, branch_id)["account_sub"] == "400000000000000000004"


def test_second_branch_of_the_same_account_links_to_the_existing_grant(
    upstream, db, google, unique
):
    """DESIGN.md: one upstream grant per (provider, account sub), linked to many branches."""
    account = Account("500000000000000000005", "chain@branch.example")
    first, second = unique("first"), unique("second")
    connect_branch(upstream, db, google, first, account=account)
    body = connect_branch(upstream, db, google, second, account=account)
    assert body["reused_grant"] is True
    assert sorted(body["branches"]) == sorted([first, second])
    assert credential_of(db, first)["id"] == credential_of(db, second)["id"]
    assert db.count("oauth2_upstream_credentials", "account_sub = :s", s=account.sub) == 1


def test_disconnect_revokes_only_when_the_last_branch_goes(upstream, db, google, unique):
    """RFC 7009 at Google only with the grant's last branch; its tokens are deleted."""
    account = Account("600000000000000000006", "shared@branch.example")
    first, second = unique("a"), unique("b")
    connect_branch(upstream, db, google, first, account=account)
    connect_branch(upstream, db, google, second, account=account)
    refresh_token = google.issued_refresh_tokens[-1]

    one = cli(upstream, "branches", "disconnect", first, "--provider", "google", "--json")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["grant_deleted"] is False
    assert google.revocations == []
    assert credential_of(db, first) is None and credential_of(db, second) is not None

    two = cli(upstream, "branches", "disconnect", second, "--provider", "google", "--json")
    assert two.returncode == 0, two.stderr
    result = json.loads(two.stdout)
    assert result["grant_deleted"] is True and result["revoked"] is True
    assert google.revocations == [refresh_token]
    assert db.count("oauth2_upstream_credentials", "account_sub = :s", s=account.sub) == 0
    assert (
        db.count(
            "oauth2_token_logs",
            "action = 'upstream_unlinked' AND branch_id IN (:a, :b)",
            a=first,
            b=second,
        )
        == 2
    )


def test_disconnect_when_revocation_fails_changes_nothing_unless_forced(
    upstream, db, google, unique
):
    branch_id = unique("down")
    down_account = Account("610000000000000000061", "down@branch.example")
    connect_branch(upstream, db, google, branch_id, account=down_account)
    before = credential_rows(db)
    google.revoke_mode = "error500"
    failed = cli(upstream, "branches", "disconnect", branch_id)
    assert failed.returncode == 5  # the provider is unreachable (README "Exit statuses")
    assert "nothing changed" in failed.stderr
    assert credential_rows(db) == before
    unlinked = "action IN ('upstream_unlinked', 'admin_branch_disconnected') AND branch_id = :b"
    assert db.count("oauth2_token_logs", unlinked, b=branch_id) == 0

    forced = cli(upstream, "branches", "disconnect", branch_id, "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["grant_deleted"] is True
    assert credential_of(db, branch_id) is None
    # The operator's row commits with the unlink and its upstream_unlinked row.
    rows = db.rows(
        "SELECT action, client_id, CAST(details AS TEXT) FROM oauth2_token_logs WHERE action IN"
        " ('upstream_unlinked', 'admin_branch_disconnected') AND branch_id = :b ORDER BY id",
        b=branch_id,
    )
    assert [row[0] for row in rows] == ["upstream_unlinked", "admin_branch_disconnected"]
    operator = json.loads(rows[1][2])
    assert rows[1][1] is None and operator["via"] == "cli" and operator["grant_deleted"] is True


def test_reconnecting_with_another_account_replaces_and_revokes_the_old_grant(
    upstream, db, google, unique
):
    branch_id = unique("switch")
    old_account = Account("700000000000000000007", "old@branch.example")
    connect_branch(upstream, db, google, branch_id, account=old_account)
    old_refresh = google.issued_refresh_tokens[-1]
    old_id = credential_of(db, branch_id)["id"]
    new_account = Account("800000000000000000008", "new@branch.example")
    connect_branch(upstream, db, google, branch_id, account=new_account)
    assert credential_of(db, branch_id)["account_email"] == "new@branch.example"
    assert db.count("oauth2_upstream_credentials", "id = :i", i=old_id) == 0
    assert google.revocations == [old_refresh]


def test_reconnect_without_a_new_refresh_token_keeps_the_stored_one(upstream, db, google, unique):
    """DESIGN.md: never overwrite a stored refresh token with null."""
    from tests.fake_google import decrypt_stored

    account = Account("900000000000000000009", "again@branch.example")
    branch_id = unique("again")
    connect_branch(upstream, db, google, branch_id, account=account)
    original = decrypt_stored(db.keys, credential_of(db, branch_id), "refresh")
    google.include_refresh_token_on_code = False
    connect_branch(upstream, db, google, branch_id, account=account)
    assert decrypt_stored(db.keys, credential_of(db, branch_id), "refresh") == original


# -- refused callbacks: clear errors, nothing stored ---------------------------------------


def test_callback_with_unknown_state_is_refused(upstream, db, google, unique):
    before = credential_rows(db)
    response = callback(upstream.url("/upstream/google/callback?state=made-up&code=abc"))
    assert_callback_refused(response, "state")
    assert credential_rows(db) == before
    assert google.code_exchanges == 0


def test_callback_state_works_once(upstream, db, google, unique):
    """RFC 6749 §10.12: `state` is single use; a replayed callback is refused."""
    branch_id = unique("once")
    location = follow_consent(connection_url(upstream, db, branch_id))
    assert callback(location).status_code == 200
    before = credential_rows(db)
    replay = callback(location)
    assert_callback_refused(replay, "already used")
    assert credential_rows(db) == before
    assert google.code_exchanges == 1


def test_callback_with_expired_state_is_refused(upstream, db, google, unique):
    branch_id = unique("late")
    location = follow_consent(connection_url(upstream, db, branch_id, state_ttl=1))
    time.sleep(1.5)
    before = credential_rows(db)
    response = callback(location)
    assert_callback_refused(response, "expired")
    assert credential_rows(db) == before
    assert google.code_exchanges == 0
    assert credential_of(db, branch_id) is None


# What the fake Google answers instead of a usable grant; the id names the rule.
PROVIDER_ANSWER_REFUSALS = [
    # RFC 6749 §4.1.2.1: the provider redirected back with `error=access_denied`.
    pytest.param("authorize_error", "access_denied", "access_denied", id="provider-error"),
    # DESIGN.md: a user can untick business.manage; say so instead of storing a useless grant.
    pytest.param(
        "granted_scope", "openid email", "business.manage", id="consent-without-business-manage"
    ),
]


@pytest.mark.parametrize(("setting", "value", "mentions"), PROVIDER_ANSWER_REFUSALS)
def test_callback_with_an_unusable_provider_answer_is_refused_and_nothing_stored(
    upstream, db, google, unique, setting, value, mentions
):
    """The callback is refused naming the reason, nothing is stored, and the failure is
    audited (through the buffer: a refused callback changes nothing else)."""
    branch_id = unique("refused")
    setattr(google, setting, value)
    location = follow_consent(connection_url(upstream, db, branch_id))
    before = credential_rows(db)
    response = callback(location)
    assert_callback_refused(response, mentions)
    assert credential_rows(db) == before
    assert credential_of(db, branch_id) is None
    deadline = time.monotonic() + 5
    while not db.count(
        "oauth2_token_logs", "action = 'upstream_link_failed' AND branch_id = :b", b=branch_id
    ):
        assert time.monotonic() < deadline, "no upstream_link_failed audit row"
        time.sleep(0.1)


def test_callback_page_is_html_for_browsers(upstream, db, google, unique):
    branch_id = unique("html")
    location = follow_consent(connection_url(upstream, db, branch_id))
    page = requests_get_html(location)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["x-frame-options"] == "DENY"
    replay = requests_get_html(location)
    assert replay.status_code == 400 and "not connected" in replay.text


# -- configuration and CLI errors -----------------------------------------------------------


def test_unconfigured_provider_names_the_missing_variables(upstream, db, unique):
    branch_id = unique("unconfigured")
    ensure_branch(db, branch_id)
    result = cli(upstream, "branches", "connect", branch_id, "--provider", "microsoft")
    assert result.returncode == 2
    assert "OAUTH2_UPSTREAM_MICROSOFT_CLIENT_ID" in result.stderr
    assert "OAUTH2_UPSTREAM_MICROSOFT_CLIENT_SECRET" in result.stderr


def test_connect_unknown_branch_is_a_clear_cli_error(upstream):
    result = cli(upstream, "branches", "connect", "no-such-branch")
    assert result.returncode == 3 and "not found" in result.stderr


def test_grant_requires_an_existing_client_and_branch(upstream, db, unique):
    branch_id = unique("grant")
    ensure_branch(db, branch_id)
    result = cli(upstream, "branches", "grant", branch_id, "--client", "no-such-client")
    assert result.returncode == 3 and "no-such-client" in result.stderr
    client_id, _ = exchange_client(db, [])
    result = cli(upstream, "branches", "grant", "no-such-branch", "--client", client_id)
    assert result.returncode == 3 and "no-such-branch" in result.stderr
