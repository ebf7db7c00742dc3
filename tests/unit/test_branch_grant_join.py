"""The one branch-grant join (`storage.upstream.join_branch_grant`): every branch keeps its
row, joined to its upstream link (only the named provider's, when one is named) and that
link's grant. Run on a real in-memory SQLite database built from the models."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import bindparam, create_engine, select
from sqlalchemy.orm import Session

from oauth2_server.db.models import Base, Branch, BranchUpstreamLink, UpstreamCredential
from oauth2_server.storage import upstream as storage

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def db() -> Iterator[Session]:
    """Branches `linked` (google and microsoft grants) and `bare` (no link)."""
    engine = create_engine("sqlite://")
    tables = [Branch.__table__, UpstreamCredential.__table__, BranchUpstreamLink.__table__]
    Base.metadata.create_all(engine, tables=tables)
    with Session(engine) as session, session.begin():
        for branch_id in ("bare", "linked"):
            session.add(Branch(branch_id=branch_id, name=branch_id, created_at=NOW, updated_at=NOW))
        session.flush()
        for provider in ("google", "microsoft"):
            storage.insert_credential(
                session,
                credential_id=f"grant-{provider}",
                provider=provider,
                account_sub=f"sub-{provider}",
                account_email=None,
                scope="openid",
                sealed=storage.SealedTokens("k1", b"access", b"refresh"),
                access_expires_at=NOW + timedelta(hours=1),
                now=NOW,
            )
            storage.link_branch(session, "linked", provider, f"grant-{provider}", NOW)
        yield session
    engine.dispose()


def rows(db: Session, provider: object = None) -> list[tuple[object, ...]]:
    stmt = select(Branch.branch_id, BranchUpstreamLink.provider, UpstreamCredential.id)
    stmt = storage.join_branch_grant(stmt.select_from(Branch), provider)  # type: ignore[arg-type]
    return sorted(db.execute(stmt, {"provider": "google"}).all(), key=str)


def test_every_branch_keeps_its_row_with_each_of_its_grants(db):
    assert rows(db) == [
        ("bare", None, None),
        ("linked", "google", "grant-google"),
        ("linked", "microsoft", "grant-microsoft"),
    ]


def test_a_named_provider_joins_only_that_providers_grant(db):
    assert rows(db, bindparam("provider")) == [
        ("bare", None, None),
        ("linked", "google", "grant-google"),
    ]


def test_connection_status_lists_unconnected_branches_and_sharing(db):
    storage.link_branch(db, "bare", "google", "grant-google", NOW)
    status = {(s.branch_id, s.provider): s for s in storage.connection_status(db)}
    assert set(status) == {("bare", "google"), ("linked", "google"), ("linked", "microsoft")}
    assert status[("bare", "google")].branches_sharing == 2
    assert status[("linked", "microsoft")].branches_sharing == 1
    storage.unlink_branch(db, "bare", "google")
    (bare,) = storage.connection_status(db, "bare")
    assert (bare.provider, bare.credential_id, bare.branches_sharing) == (None, None, 0)
