"""Risk scores and flags on audit rows (oauth2_server/audit/risk.py, SECURITY.md): a refresh
from a new IP for its grant is flagged `new_ip`; client authentication failures from one
IP raise the score and, from the fifth, add `auth_failure_burst`; flagged rows are found
by the audit query."""

from __future__ import annotations

import random
import time

import pytest

from oauth2_server.audit.risk import RACE_WINDOW
from tests.admin_helpers import PASSWORD, admin_api
from tests.conftest import start_live_server
from tests.flows import authorize_with_pkce, exchange_code, public_app


@pytest.fixture(scope="module")
def server(database, tmp_path_factory):
    """This module's server trusts X-Forwarded-For from 127.0.0.1 (the tests play a
    proxy reporting client IPs); by default the server trusts nobody."""
    live = start_live_server(
        database, tmp_path_factory.mktemp("audit-risk"), OAUTH2_FORWARDED_ALLOW_IPS="127.0.0.1"
    )
    yield live
    live.stop()


@pytest.fixture
def admin(server, db, unique):
    return admin_api(server, db, unique)


def some_ip() -> str:
    return f"203.0.113.{random.randrange(1, 255)}"


def signed_in(server, db, unique, name):
    """A new user `name` signs in to a new public app and consents: (the app's client_id,
    the authorization result with its code)."""
    client_id = public_app(db, unique)
    user = db.create_user(unique(name), PASSWORD)
    return client_id, authorize_with_pkce(server.base_url, client_id, user.username, PASSWORD)


def refresh_from(server, client_id, refresh_token, ip):
    response = server.post(
        "/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": client_id,
        },
        headers={"X-Forwarded-For": ip},
    )
    assert response.status_code == 200, response.text
    return response.json()


def refreshed_from(server, db, unique, name, ips):
    """A new app's grant, refreshed once from each of `ips` in turn: (the app's client_id,
    its `refreshed` audit rows (ip, risk_score, flags) in order)."""
    client_id, result = signed_in(server, db, unique, name)
    token = exchange_code(server.base_url, result)
    for ip in ips:
        token = refresh_from(server, client_id, token["refresh_token"], ip)
    rows = db.rows(
        "SELECT ip, risk_score, flags FROM oauth2_token_logs WHERE client_id = :c "
        "AND action = 'refreshed' ORDER BY id",
        c=client_id,
    )
    return client_id, rows


def test_refresh_from_a_new_ip_is_flagged(server, db, admin, unique):
    elsewhere = some_ip()
    client_id, rows = refreshed_from(
        server, db, unique, "yara", ["127.0.0.1", elsewhere, elsewhere]
    )
    assert [(ip, float(score)) for ip, score, _ in rows] == [
        ("127.0.0.1", 0.0),
        (elsewhere, 0.4),
        (elsewhere, 0.0),
    ]
    assert [str(flags).count("new_ip") for *_, flags in rows] == [0, 1, 0]
    found = admin.get("/audit", params={"client_id": client_id, "flag": "new_ip"}).json()["items"]
    assert [(item["ip"], item["flags"]) for item in found] == [(elsewhere, ["new_ip"])]


def test_over_long_ip_is_compared_as_stored_and_not_flagged_new(server, db, unique):
    """An IP longer than the `ip` column is stored cut (audit_bounds); the next refresh from
    the same IP is compared in that stored form, so it is not a `new_ip`."""
    long_ip = "203.0.113." + "9" * 120
    _, rows = refreshed_from(server, db, unique, "yuri", [long_ip, long_ip])
    assert [str(flags).count("new_ip") for *_, flags in rows] == [1, 0]


def test_client_auth_failures_from_one_ip_raise_the_score(server, db, admin, unique):
    client_id, _ = db.create_client(name=unique("svc"))
    ip = some_ip()
    for _ in range(6):
        response = server.post(
            "/oauth2/token",
            auth=(client_id, "wrong"),
            headers={"X-Forwarded-For": ip},
            data={"grant_type": "client_credentials"},
        )
        assert response.status_code == 401
    deadline = time.monotonic() + 5
    while (
        time.monotonic() < deadline
        and db.count("oauth2_token_logs", "action = 'client_auth_failed' AND ip = :ip", ip=ip) < 6
    ):
        time.sleep(0.1)
    found = admin.get("/audit", params={"ip": ip, "action": "client_auth_failed"}).json()["items"]
    assert [item["risk_score"] for item in found] == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert ["auth_failure_burst" in item["flags"] for item in found] == [False] * 4 + [True] * 2
    burst = admin.get("/audit", params={"ip": ip, "flag": "auth_failure_burst"}).json()["items"]
    assert len(burst) == 2


def test_code_replay_scores_one_and_is_found_by_min_risk(server, db, admin, unique):
    client_id, result = signed_in(server, db, unique, "zed")
    exchange_code(server.base_url, result)
    time.sleep(RACE_WINDOW + 0.2)  # a replay, not the loser of a race (SECURITY.md)
    with pytest.raises(Exception):  # noqa: B017 (oauthlib raises its own invalid_grant)
        exchange_code(server.base_url, result)
    found = admin.get("/audit", params={"client_id": client_id, "min_risk": "0.9"}).json()["items"]
    assert [(item["action"], item["risk_score"], item["flags"]) for item in found] == [
        ("code_replay", 1.0, ["code_replay"])
    ]
