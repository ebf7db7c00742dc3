"""Every token a revocation touches is named in the audit trail (issue #11 item 1): one
`token_revoked` row per token, found by `token_id`, naming who revoked it, the token's
client (`target_client_id`) and family, next to the revocation's summary row. The
token's own row may be deleted by the janitor later; these rows stay.

Covered: an admin revocation by client (API), a user deactivated from the command line,
and refresh-token reuse (RFC 9700 §4.14.2), which revokes the whole family.
"""

from __future__ import annotations

import json

import jwt
import requests
from sqlalchemy import text

from tests.admin_helpers import admin_api, run_cli
from tests.test_refresh_rotation import live_grant, refresh


def _jti(token: str) -> str:
    # Only the claim is read; signatures are verified by the suites that test them.
    return jwt.decode(token, options={"verify_signature": False})["jti"]


def _revoked_rows(admin, **params) -> list[dict]:
    page = admin.get("/audit", params={"action": "token_revoked", "limit": "1000", **params})
    assert page.status_code == 200, page.text
    return page.json()["items"]


def test_an_admin_revocation_names_every_token_it_revoked(server, db, unique) -> None:
    admin = admin_api(server, db, unique)
    client_id, secret = db.create_client(name=unique("victim"))
    tokens = [server.client_credentials_token(client_id, secret) for _ in range(3)]
    revoked = admin.post("/tokens/revoke", {"client_id": client_id})
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked"] == 3
    rows = _revoked_rows(admin, target_client_id=client_id)
    assert sorted(row["token_id"] for row in rows) == sorted(_jti(t) for t in tokens)
    for row in rows:
        assert row["client_id"] == admin.client_id  # who revoked it
        assert row["details"]["kind"] == "access_token"
        assert row["details"]["revoked_by"] == {"client_id": client_id}
        assert row["details"]["via"] == "api" and row["details"]["admin_jti"]
    (one,) = _revoked_rows(admin, token_id=_jti(tokens[0]))  # "was token X revoked, by whom?"
    assert one["client_id"] == admin.client_id


def test_a_cli_user_deactivation_names_every_token_of_the_user(server, db, unique) -> None:
    admin = admin_api(server, db, unique)
    username = unique("leaver")
    client_id, tokens = live_grant(server, db, username)
    with db.engine.connect() as connection:
        subject = connection.execute(
            text("SELECT subject FROM oauth2_users WHERE username = :u"), {"u": username}
        ).scalar_one()
    result = run_cli(db, "users", "update", subject, "--inactive", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["revoked"] == 2  # its access and refresh token
    rows = _revoked_rows(admin, target_client_id=client_id)
    assert {row["details"]["kind"] for row in rows} == {"access_token", "refresh_token"}
    assert _jti(tokens["access_token"]) in {row["token_id"] for row in rows}
    for row in rows:
        assert row["client_id"] is None and row["details"]["via"] == "cli"
        assert row["details"]["revoked_by"] == {"user": subject}
        assert row["family_id"]  # the grant, so `family_id=` finds them too


def test_refresh_reuse_names_every_token_of_the_family(server, db, unique) -> None:
    """RFC 9700 §4.14.2: a rotated refresh token used again revokes the family; each
    revoked token gets its row, caused by `refresh_reuse`."""
    admin = admin_api(server, db, unique)
    client_id, first = live_grant(server, db, unique("reuser"))
    second = refresh(server.base_url, client_id, first["refresh_token"])
    assert second.status_code == 200, second.text
    reused = refresh(server.base_url, client_id, first["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    family = _revoked_rows(admin, target_client_id=client_id)
    assert {row["details"]["cause"] for row in family} == {"refresh_reuse"}
    assert _jti(first["access_token"]) in {row["token_id"] for row in family}
    assert _jti(second.json()["access_token"]) in {row["token_id"] for row in family}
    assert len({row["family_id"] for row in family}) == 1
    assert len(family) == 4  # two access tokens, the live refresh token and the rotated one
    summary = admin.get(
        "/audit", params={"action": "refresh_reuse", "family_id": family[0]["family_id"]}
    )
    (reuse,) = summary.json()["items"]
    assert reuse["details"]["revoked"] == len(family)


def test_the_revocation_endpoint_names_the_family_it_revokes(server, db, unique) -> None:
    """RFC 7009 §2.1: revoking a refresh token revokes the grant's other tokens too."""
    admin = admin_api(server, db, unique)
    client_id, tokens = live_grant(server, db, unique("revoker"))
    response = requests.post(
        server.base_url + "/oauth2/revoke",
        data={"token": tokens["refresh_token"], "client_id": client_id},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    rows = _revoked_rows(admin, target_client_id=client_id)
    assert {row["details"]["cause"] for row in rows} == {"revoked"}
    assert _jti(tokens["access_token"]) in {row["token_id"] for row in rows}
