"""Refresh tokens: rotation on every use, reuse detection revoking the family
(RFC 6749 §6, RFC 9700 §4.14.2), scope never widened, one winner under concurrency."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
import requests

from tests.flows import REDIRECT_URI, authorize_with_pkce, exchange_code

PASSWORD = "correct horse battery"


@pytest.fixture
def grant(server, db, unique):
    """A public client, a user, and the token response of one authorization."""
    client_id, _ = db.create_client(
        name="spa",
        public=True,
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI],
        scope="read write",
    )
    user = db.create_user(unique("bob"), PASSWORD)
    result = authorize_with_pkce(
        server.base_url, client_id, user.username, PASSWORD, scope="read write"
    )
    return client_id, exchange_code(server.base_url, result)


def refresh(base_url: str, client_id: str, refresh_token: str, **extra: str) -> requests.Response:
    return requests.post(
        base_url + "/oauth2/token",
        timeout=30,
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": client_id,
            **extra,
        },
    )


def test_each_refresh_returns_a_new_refresh_token(server, db, grant):
    client_id, token = grant
    first = refresh(server.base_url, client_id, token["refresh_token"])
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["refresh_token"] != token["refresh_token"]
    assert body["scope"] == "read write"
    assert first.headers["cache-control"] == "no-store"
    second = refresh(server.base_url, client_id, body["refresh_token"])
    assert second.status_code == 200
    family = db.scalar(
        "SELECT family_id FROM oauth2_refresh_tokens WHERE token_hash = :h",
        h=hashlib.sha256(token["refresh_token"].encode()).hexdigest(),
    )
    assert db.count("oauth2_refresh_tokens", "family_id = :f", f=family) == 3
    assert (
        db.count("oauth2_token_logs", "action = 'refreshed' AND client_id = :c", c=client_id) == 2
    )


def test_reused_refresh_token_revokes_family(server, db, grant):
    client_id, token = grant
    rotated = refresh(server.base_url, client_id, token["refresh_token"]).json()
    reuse = refresh(server.base_url, client_id, token["refresh_token"])
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    # The legitimate newest token of the family is dead too.
    after = refresh(server.base_url, client_id, rotated["refresh_token"])
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"
    introspector, secret = db.create_client(scope="introspect")
    for access in (token["access_token"], rotated["access_token"]):
        answer = server.post(
            "/oauth2/introspect", auth=(introspector, secret), data={"token": access}
        ).json()
        assert answer == {"active": False}
    rows = db.rows(
        "SELECT risk_score FROM oauth2_token_logs WHERE action = 'refresh_reuse' "
        "AND client_id = :c",
        c=client_id,
    )
    assert [float(r[0]) for r in rows] == [1.0]


def test_refresh_may_narrow_but_never_widen_scope(server, db, grant):
    client_id, token = grant
    narrowed = refresh(server.base_url, client_id, token["refresh_token"], scope="read")
    assert narrowed.status_code == 200 and narrowed.json()["scope"] == "read"
    # The new refresh token keeps the grant's scope (RFC 6749 §6), so write is still allowed...
    body = narrowed.json()
    before = db.count("oauth2_access_tokens")
    wider = refresh(server.base_url, client_id, body["refresh_token"], scope="read write admin")
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    assert db.count("oauth2_access_tokens") == before
    # ...and the refused request changed nothing: the token still works once.
    again = refresh(server.base_url, client_id, body["refresh_token"], scope="read write")
    assert again.status_code == 200 and again.json()["scope"] == "read write"


def test_refresh_token_of_another_client_is_refused_and_stays_usable(server, db, grant):
    client_id, token = grant
    other, _ = db.create_client(
        name="other",
        public=True,
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI],
    )
    stolen = refresh(server.base_url, other, token["refresh_token"])
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    assert refresh(server.base_url, client_id, token["refresh_token"]).status_code == 200


def test_expired_refresh_token_is_invalid_grant(start_server, db, unique):
    live = start_server(OAUTH2_REFRESH_TOKEN_TTL="1")
    client_id, _ = db.create_client(
        public=True,
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI],
    )
    user = db.create_user(unique("carol"), PASSWORD)
    token = exchange_code(
        live.base_url, authorize_with_pkce(live.base_url, client_id, user.username, PASSWORD)
    )
    time.sleep(1.5)
    response = refresh(live.base_url, client_id, token["refresh_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert (
        db.count("oauth2_token_logs", "action = 'refresh_reuse' AND client_id = :c", c=client_id)
        == 0
    )


def test_concurrent_uses_of_one_refresh_token_have_exactly_one_winner(
    start_server, server, db, unique
):
    """DESIGN invariant 5: two processes race the same refresh token; exactly one wins."""
    other = start_server()
    client_id, _ = db.create_client(
        public=True,
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI],
    )
    user = db.create_user(unique("dave"), PASSWORD)
    for _round in range(5):
        token = exchange_code(
            server.base_url,
            authorize_with_pkce(server.base_url, client_id, user.username, PASSWORD),
        )
        barrier = threading.Barrier(4)
        statuses: list[int] = []

        def race(
            base_url: str,
            refresh_token: str = token["refresh_token"],
            barrier: threading.Barrier = barrier,
            statuses: list[int] = statuses,
        ) -> None:
            barrier.wait()
            statuses.append(refresh(base_url, client_id, refresh_token).status_code)

        threads = [
            threading.Thread(target=race, args=(url,))
            for url in (server.base_url, other.base_url) * 2
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(statuses) == [200, 400, 400, 400], statuses
