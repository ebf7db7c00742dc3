"""One write path per row and backend (issue #10; `storage.protocols`): the access-token
row of every grant (RFC 6749 §4.1.3 authorization code, §6 refresh, §4.4 client
credentials) goes through one writer per backend.

On PostgreSQL that writer is the hot path's statement (`PgFastStore.issue`), which commits
on its own before the request's session does. PostgreSQL's `xmin` (the id of the
transaction that wrote a row) shows which path wrote a row: an authorization-code or
refresh grant's access-token row has a different `xmin` from the grant's refresh-token and
audit rows, which the session writes; a client_credentials row shares its `xmin` with its
audit row (one statement). On SQLite every row is written in the request's session.
"""

from __future__ import annotations

import hashlib

import jwt
import pytest
import requests
from sqlalchemy import text

from tests.flows import REDIRECT_URI, authorize_with_pkce, exchange_code
from tests.test_refresh_rotation import refresh

PASSWORD = "correct horse battery"


def _jti(access_token: str) -> str:
    # Only the claim is read here; signatures are verified by the suites that test them.
    return jwt.decode(access_token, options={"verify_signature": False})["jti"]


def _writers(db, answer: dict) -> dict[str, str | None]:
    """The transaction id (`xmin`) of the token response `answer`'s access-token row, of
    its audit row, and of its refresh-token row (None when it has no refresh token)."""
    jti = _jti(answer["access_token"])
    digest = hashlib.sha256(answer.get("refresh_token", "").encode()).hexdigest()
    with db.engine.connect() as connection:
        access = connection.execute(
            text("SELECT xmin::text FROM oauth2_access_tokens WHERE jti = :jti"), {"jti": jti}
        ).scalar_one()
        audit = connection.execute(
            text("SELECT xmin::text FROM oauth2_token_logs WHERE token_id = :jti"), {"jti": jti}
        ).scalar_one()
        refresh = connection.execute(
            text("SELECT xmin::text FROM oauth2_refresh_tokens WHERE token_hash = :digest"),
            {"digest": digest},
        ).scalar()
    return {"access": access, "audit": audit, "refresh": refresh}


@pytest.fixture
def grant(server, db, unique):
    """A public client and the token response of one authorization with PKCE."""
    client_id, _ = db.create_client(
        public=True,
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI],
    )
    user = db.create_user(unique("writer"), PASSWORD)
    result = authorize_with_pkce(server.base_url, client_id, user.username, PASSWORD)
    return client_id, exchange_code(server.base_url, result)


def test_session_grants_write_the_access_token_row_through_the_backends_one_path(
    server, db, grant
) -> None:
    """Authorization code (RFC 6749 §4.1.3) and refresh (§6): on PostgreSQL the row is
    written by the hot path's statement, committed before the session's rows; on SQLite
    in the session, with them. (Each answer is checked before the next request: rotation
    updates the refresh-token row, which gives it a new `xmin`.)"""
    client_id, answer = grant
    for step in ("authorization_code", "refresh_token"):
        if step == "refresh_token":
            response = refresh(server.base_url, client_id, answer["refresh_token"])
            assert response.status_code == 200, response.text
            answer = response.json()
        if db.backend == "sqlite":
            with db.engine.connect() as connection:
                found = connection.execute(
                    text("SELECT grant_type FROM oauth2_access_tokens WHERE jti = :jti"),
                    {"jti": _jti(answer["access_token"])},
                ).scalar_one()
            assert found == step
            continue
        writers = _writers(db, answer)
        assert writers["refresh"] is not None, step
        assert writers["refresh"] == writers["audit"], step  # the session's transaction
        assert writers["access"] != writers["audit"], step  # the hot path's own statement


def test_client_credentials_row_and_its_audit_row_commit_in_one_statement(server, db) -> None:
    """RFC 6749 §4.4 on the hot path: the access-token row and its audit row are written
    by one statement (one transaction) on PostgreSQL."""
    client_id, secret = db.create_client()
    response = requests.post(
        server.base_url + "/oauth2/token",
        timeout=30,
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret),
    )
    assert response.status_code == 200, response.text
    jti = _jti(response.json()["access_token"])
    if db.backend == "sqlite":
        with db.engine.connect() as connection:
            count = connection.execute(
                text("SELECT count(*) FROM oauth2_access_tokens WHERE jti = :jti"), {"jti": jti}
            ).scalar_one()
        assert count == 1
        return
    writers = _writers(db, response.json())
    assert writers["refresh"] is None
    assert writers["access"] == writers["audit"]
