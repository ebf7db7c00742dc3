"""`storage.tokens`' row functions on an in-memory SQLite database: a code and a refresh
token are read back as they were written (one column list per row, from its record),
and a revocation counts only the tokens it revoked (RFC 7009 §2.2: revoking twice
changes nothing the second time)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from oauth2_server.db.models import AccessToken, AuthorizationCode, Base, RefreshToken, User
from oauth2_server.storage import tokens

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    models = (AccessToken, AuthorizationCode, RefreshToken, User)  # User: rows name the user
    tables = [model.__table__ for model in models]
    Base.metadata.create_all(engine, tables=tables)
    with Session(engine) as session:
        yield session
    engine.dispose()


def _refresh(digest: str, parent_id: int | None = None, **changes) -> tokens.NewRefreshToken:
    values = {
        "token_hash": digest,
        "family_id": "family-1",
        "parent_id": parent_id,
        "client_id": "app",
        "user_id": 7,
        "scope": "read",
        "issued_at": NOW,
        "expires_at": NOW + timedelta(days=30),
        **changes,
    }
    return tokens.NewRefreshToken(**values)


def _access(jti: str) -> tokens.AccessTokenRecord:
    return tokens.AccessTokenRecord(
        jti, "app", "sub-7", 7, "read", "refresh_token", "family-1", NOW, NOW, None
    )


def test_code_reads_back_as_written(session):
    issued = tokens.NewAuthorizationCode(
        "digest", "app", 7, "https://app.example/cb", "read", "challenge", "S256", NOW
    )
    tokens.save_authorization_code(session, issued, NOW - timedelta(seconds=1))
    found = tokens.find_authorization_code(session, "digest")
    assert found is not None and found.consumed_at is None and found.family_id is None
    assert tokens.NewAuthorizationCode(**{k: getattr(found, k) for k in vars(issued)}) == issued
    consumed = tokens.consume_authorization_code(session, "digest", "family-1", NOW)
    assert consumed is None  # expires_at == now: expired
    assert tokens.find_authorization_code(session, "digest") == found


def test_refresh_token_reads_back_and_is_capped_at_the_family_end(session):
    family_end = NOW + timedelta(days=2)
    tokens.insert_refresh_token(session, _refresh("r1", family_expires_at=family_end))
    found = tokens.find_refresh_token(session, "r1")
    assert found is not None and found.rotated_at is None and found.revoked_at is None
    assert found.expires_at == family_end and found.family_expires_at == family_end
    assert (found.token_hash, found.scope, found.parent_id) == ("r1", "read", None)
    rotated = tokens.rotate_refresh_token(session, "r1", "app", NOW)
    assert rotated is not None and rotated.id == found.id and rotated.rotated_at == NOW


def test_revocation_counts_only_what_it_revoked(session):
    tokens.insert_refresh_token(session, _refresh("r1"))
    for jti in ("a1", "a2"):
        tokens.insert_access_token(session, _access(jti))
    assert tokens.revoke_access_token(session, "a1", NOW) is True
    assert tokens.revoke_access_token(session, "a1", NOW + timedelta(seconds=5)) is False
    assert tokens.get_access_token(session, "a1").revoked_at == NOW  # the first revocation
    assert len(tokens.revoke_family(session, "family-1", NOW)) == 2  # r1 and a2
    assert tokens.revoke_family(session, "family-1", NOW) == []
