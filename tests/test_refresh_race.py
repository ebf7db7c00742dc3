"""Risk scores that mean something (issue #8 item 7; oauth2_server/audit/risk.py `second_use`,
SECURITY.md "Risk scores and flags").

The losers of a concurrent race for one refresh token (RFC 9700 §4.14.2) or one
authorization code (RFC 6749 §4.1.2), within `RACE_WINDOW` (1 s) of the winning use, are
a client retrying, not a thief: their rows keep the action but are flagged `race` at
0.30. A second use after the window stays `refresh_reuse` / `code_replay` at 1.00.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import requests

from oauth2_server.audit.risk import RACE_WINDOW
from tests.admin_helpers import PASSWORD
from tests.flows import REDIRECT_URI, authorize_with_pkce, exchange_code


def public_grant(server, db, unique) -> tuple[str, dict, object]:
    """A public PKCE client, a user's authorization result and its client id."""
    client_id, _ = db.create_client(
        name=unique("racer"),
        public=True,
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI],
        scope="read",
    )
    user = db.create_user(unique("rita"), PASSWORD)
    result = authorize_with_pkce(server.base_url, client_id, user.username, PASSWORD)
    return client_id, result.params, result


def in_parallel(count: int, call: Callable[[], requests.Response]) -> list[int]:
    """`count` threads released together by a barrier; their status codes."""
    barrier = threading.Barrier(count)
    statuses: list[int] = []

    def run() -> None:
        barrier.wait()
        statuses.append(call().status_code)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def rows(db, client_id: str, action: str) -> list[tuple[float, list[str]]]:
    """(risk score, flags) of the client's audit rows with this action."""
    found = db.rows(
        "SELECT risk_score, flags FROM oauth2_token_logs WHERE client_id = :c AND action = :a",
        c=client_id,
        a=action,
    )
    # the JSON column comes back as text on SQLite
    return [
        (float(score), json.loads(flags) if isinstance(flags, str) else list(flags))
        for score, flags in found
    ]


def refresh(server, client_id: str, refresh_token: str) -> requests.Response:
    return server.post(
        "/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": client_id,
        },
    )


def test_twenty_parallel_refreshes_one_wins_the_losers_are_a_race(server, db, unique):
    client_id, _, result = public_grant(server, db, unique)
    token = exchange_code(server.base_url, result)

    statuses = in_parallel(20, lambda: refresh(server, client_id, token["refresh_token"]))

    assert sorted(statuses) == [200] + [400] * 19, statuses
    assert rows(db, client_id, "refresh_reuse") == [(0.3, ["race"])] * 19


def test_refresh_reuse_after_the_race_window_scores_one(server, db, unique):
    client_id, _, result = public_grant(server, db, unique)
    token = exchange_code(server.base_url, result)
    assert refresh(server, client_id, token["refresh_token"]).status_code == 200
    time.sleep(RACE_WINDOW + 0.3)
    assert refresh(server, client_id, token["refresh_token"]).status_code == 400
    assert rows(db, client_id, "refresh_reuse") == [(1.0, ["refresh_reuse"])]


def test_parallel_code_redemptions_one_wins_the_losers_are_a_race(server, db, unique):
    client_id, params, result = public_grant(server, db, unique)
    data = {
        "grant_type": "authorization_code",
        "code": params["code"],
        "redirect_uri": REDIRECT_URI,
        "client_id": client_id,
        "code_verifier": result.oauth._code_verifier,
    }

    statuses = in_parallel(8, lambda: server.post("/oauth2/token", data=data))

    assert sorted(statuses) == [200] + [400] * 7, statuses
    assert rows(db, client_id, "code_replay") == [(0.3, ["race"])] * 7


def test_code_replay_after_the_race_window_scores_one(server, db, unique):
    client_id, _, result = public_grant(server, db, unique)
    exchange_code(server.base_url, result)
    time.sleep(RACE_WINDOW + 0.3)
    data = {
        "grant_type": "authorization_code",
        "code": result.params["code"],
        "redirect_uri": REDIRECT_URI,
        "client_id": client_id,
        "code_verifier": result.oauth._code_verifier,
    }
    assert server.post("/oauth2/token", data=data).status_code == 400
    assert rows(db, client_id, "code_replay") == [(1.0, ["code_replay"])]
