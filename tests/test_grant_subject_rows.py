"""Every row of a user's grant names the user (issue #11 item 4: "`subject` is filled on
every row of a user's grant"): the code exchange and refreshes, refresh-token reuse and
authorization-code replay (RFC 9700 §4.14.2, RFC 6749 §4.1.2), the revocation endpoint
(RFC 7009) and each `token_revoked` row, whoever revoked. So `target_subject=<user>`
finds them all, and equals a direct SQL count.
"""

from __future__ import annotations

import hashlib

import pytest
import requests
from oauthlib.oauth2.rfc6749.errors import InvalidGrantError

from tests.admin_helpers import PASSWORD, admin_api
from tests.flows import authorize_with_pkce, exchange_code, public_app
from tests.test_refresh_rotation import refresh


def _family_rows(db, family_id: str) -> list:
    return db.rows(
        "SELECT id, action, subject FROM oauth2_token_logs WHERE family_id = :f"
        " ORDER BY created_at, id",
        f=family_id,
    )


def _family_of(db, refresh_token: str) -> str:
    digest = hashlib.sha256(refresh_token.encode()).hexdigest()
    return db.scalar("SELECT family_id FROM oauth2_refresh_tokens WHERE token_hash = :h", h=digest)


def _grant(server, client_id: str, username: str):
    result = authorize_with_pkce(server.base_url, client_id, username, PASSWORD)
    return result, exchange_code(server.base_url, result)


def test_reuse_replay_and_revocation_rows_name_the_user(server, db, unique) -> None:
    client_id = public_app(db, unique, scope="read")
    user = db.create_user(unique("grant-owner"), PASSWORD)
    result, first = _grant(server, client_id, user.username)
    family = _family_of(db, first["refresh_token"])
    second = refresh(server.base_url, client_id, first["refresh_token"])
    assert second.status_code == 200, second.text
    reused = refresh(server.base_url, client_id, first["refresh_token"])  # revokes the family
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    with pytest.raises(InvalidGrantError):
        exchange_code(server.base_url, result)  # the code again: replay
    rows = _family_rows(db, family)
    actions = {row.action for row in rows}
    assert {"issued", "refreshed", "refresh_reuse", "code_replay", "token_revoked"} <= actions
    assert [row for row in rows if row.subject != user.subject] == []

    # RFC 7009: revoking a refresh token revokes the grant; the summary row is the user's too
    _, other = _grant(server, client_id, user.username)
    revoked = requests.post(
        server.base_url + "/oauth2/revoke",
        data={"token": other["refresh_token"], "client_id": client_id},
        timeout=30,
    )
    assert revoked.status_code == 200, revoked.text
    rows = _family_rows(db, _family_of(db, other["refresh_token"]))
    assert {"issued", "revoked", "token_revoked"} <= {row.action for row in rows}
    assert [row for row in rows if row.subject != user.subject] == []


def test_an_admin_revocation_names_each_tokens_user(server, db, unique) -> None:
    """The acting admin is `client_id`; every revoked token's row names its user, so
    `target_subject` finds the user's whole history, as a direct SQL count does."""
    admin = admin_api(server, db, unique)
    client_id = public_app(db, unique, scope="read")
    user = db.create_user(unique("revoked-owner"), PASSWORD)
    _, tokens = _grant(server, client_id, user.username)
    answer = admin.post("/tokens/revoke", {"client_id": client_id})
    assert answer.status_code == 200 and answer.json()["revoked"] == 2, answer.text
    family = _family_of(db, tokens["refresh_token"])
    rows = _family_rows(db, family)
    assert [row.action for row in rows].count("token_revoked") == 2
    assert [row for row in rows if row.subject != user.subject] == []
    page = admin.get("/audit", params={"target_subject": user.subject, "limit": "1000"})
    assert page.status_code == 200, page.text
    expected = db.rows(
        "SELECT id FROM oauth2_token_logs WHERE subject = :s ORDER BY created_at, id",
        s=user.subject,
    )
    assert [item["id"] for item in page.json()["items"]] == [row.id for row in expected]
    assert {row.id for row in rows} <= {row.id for row in expected}
