"""Refresh tokens: rotation on every use, reuse detection revoking the family
(RFC 6749 §6, RFC 9700 §4.14.2), scope never widened, one winner under concurrency."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests

from oauth2_server.audit.risk import RACE_WINDOW
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


def live_grant(live, db, username: str) -> tuple[str, dict]:
    """On server `live`: a public client, a user, and the token response of one
    authorization with PKCE."""
    client_id, _ = db.create_client(
        public=True,
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI],
    )
    user = db.create_user(username, PASSWORD)
    result = authorize_with_pkce(live.base_url, client_id, user.username, PASSWORD)
    return client_id, exchange_code(live.base_url, result)


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
    time.sleep(RACE_WINDOW + 0.2)  # reuse scores 1.00; within 1 s it is a `race`
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
    client_id, token = live_grant(live, db, unique("carol"))
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


def _utc(value: object) -> datetime:
    """A timestamp read with raw SQL (a datetime on PostgreSQL, text on SQLite), in UTC."""
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _refresh_rows(db, client_id: str) -> list[tuple[datetime, datetime, datetime | None]]:
    """(issued_at, expires_at, family_expires_at) of the client's refresh tokens, oldest first."""
    return [
        (_utc(row[0]), _utc(row[1]), _utc(row[2]) if row[2] is not None else None)
        for row in db.rows(
            "SELECT issued_at, expires_at, family_expires_at FROM oauth2_refresh_tokens"
            " WHERE client_id = :c ORDER BY id",
            c=client_id,
        )
    ]


def test_rotation_keeps_the_family_end_of_the_code_exchange(server, db, grant):
    """RFC 9700 §4.14.2: rotation does not extend a family past its absolute end
    (OAUTH2_REFRESH_FAMILY_MAX_AGE, default 90 days after the code exchange)."""
    client_id, token = grant
    second = refresh(server.base_url, client_id, token["refresh_token"])
    assert second.status_code == 200, second.text
    (first_issued, first_expires, family_end), (_, second_expires, second_family_end) = (
        _refresh_rows(db, client_id)
    )
    assert family_end == first_issued + timedelta(days=90)
    assert second_family_end == family_end
    assert first_expires == first_issued + timedelta(days=30)  # sliding lifetime, below the cap
    assert second_expires <= family_end


def test_refresh_family_ends_at_its_absolute_lifetime(start_server, db, unique):
    """A family started with OAUTH2_REFRESH_FAMILY_MAX_AGE=3: rotated tokens expire with the
    family, and after it every refresh is invalid_grant and writes no token."""
    live = start_server(OAUTH2_REFRESH_FAMILY_MAX_AGE="3")
    client_id, token = live_grant(live, db, unique("dora"))
    rotated = refresh(live.base_url, client_id, token["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    (issued, expires, family_end), (_, rotated_expires, rotated_family_end) = _refresh_rows(
        db, client_id
    )
    assert family_end == issued + timedelta(seconds=3) == expires
    assert rotated_family_end == family_end == rotated_expires  # capped, not now + 30 days

    time.sleep(max(0.0, (family_end - datetime.now(UTC)).total_seconds()) + 0.5)
    before = (
        db.count("oauth2_refresh_tokens", "client_id = :c", c=client_id),
        db.count("oauth2_access_tokens", "client_id = :c", c=client_id),
    )
    response = refresh(live.base_url, client_id, rotated.json()["refresh_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert response.headers["cache-control"] == "no-store"
    assert (
        db.count("oauth2_refresh_tokens", "client_id = :c", c=client_id),
        db.count("oauth2_access_tokens", "client_id = :c", c=client_id),
    ) == before


def test_refresh_family_max_age_zero_means_no_absolute_end(start_server, db, unique):
    live = start_server(OAUTH2_REFRESH_FAMILY_MAX_AGE="0")
    client_id, token = live_grant(live, db, unique("erin"))
    assert refresh(live.base_url, client_id, token["refresh_token"]).status_code == 200
    rows = _refresh_rows(db, client_id)
    assert [family_end for _, _, family_end in rows] == [None, None]
    assert all(expires == issued + timedelta(days=30) for issued, expires, _ in rows)
