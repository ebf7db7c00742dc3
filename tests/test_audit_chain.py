"""Tamper evidence: sealed audit rows form a hash chain, and `audit verify` reports the
first altered, deleted or inserted row. Each test tampers with the database directly,
as an attacker with SQL access would, checks the report, then undoes the tampering."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import insert, select, update

from oauth2_server.audit.chain import ROW_COLUMNS, link_hash
from oauth2_server.db.models import TokenLog
from tests.admin_helpers import event, execute, insert_log_rows, run_cli, verify
from tests.chain_helpers import seal_now


@pytest.fixture
def chain(server, db, unique):
    """Five fresh rows, sealed; the chain verifies before the test tampers with it."""
    client = unique("chain")
    now = datetime.now(UTC)
    ids = insert_log_rows(
        db,
        [
            event(
                "issued",
                now + timedelta(microseconds=i),
                client_id=client,
                token_id=f"t{i}",
                details={"n": i},
            )
            for i in range(5)
        ],
    )
    seal_now(db)
    report = verify(db)
    assert report.ok, report.problem
    return ids


def saved(db, row_id) -> dict:
    """Every column of a row, typed (as the chain code reads it)."""
    with db.session() as session:
        return session.execute(select(*ROW_COLUMNS).where(TokenLog.id == row_id)).one()._asdict()


def reinsert(db, values: dict) -> None:
    with db.session() as session:
        session.execute(insert(TokenLog).values(**values))


def test_an_altered_row_is_reported(db, chain):
    target = chain[2]
    execute(db, "UPDATE oauth2_token_logs SET action = 'revoked' WHERE id = :i", i=target)
    try:
        report = verify(db)
        assert report.problem.kind == "altered" and report.problem.log_id == target
        result = run_cli(db, "audit", "verify")
        assert result.returncode == 1
        problem = json.loads(result.stdout)["problem"]
        assert problem["kind"] == "altered" and problem["log_id"] == target
    finally:
        execute(db, "UPDATE oauth2_token_logs SET action = 'issued' WHERE id = :i", i=target)
    assert verify(db).ok


# Every content column the hash covers, with a forged value; `canonical` must cover each.
FORGERIES = {
    "action": "revoked",
    "client_id": "forged-client",
    "subject": "forged-subject",
    "branch_id": "forged-branch",
    "grant_type": "forged",
    "token_id": "forged",
    "family_id": "forged-family",
    "ip": "203.0.113.66",
    "user_agent": "forged agent",
    "request_id": "forged-request",
    "risk_score": 0.5,
    "flags": ["forged"],
    "details": {"n": 99},
}


@pytest.mark.parametrize("column", sorted(FORGERIES))
def test_altering_any_content_column_is_reported(db, chain, column):
    """The chain covers every column of a row (SECURITY.md "Audit trail integrity"):
    changing any one of them, `ip` and `details` included, breaks verification."""
    target = chain[3]
    original = saved(db, target)[column]
    with db.session() as session:
        session.execute(
            update(TokenLog).where(TokenLog.id == target).values({column: FORGERIES[column]})
        )
    try:
        report = verify(db)
        assert not report.ok, f"altering {column} was not noticed"
        assert report.problem.kind == "altered" and report.problem.log_id == target
    finally:
        with db.session() as session:
            session.execute(
                update(TokenLog).where(TokenLog.id == target).values({column: original})
            )
    assert verify(db).ok


def test_an_altered_and_rehashed_row_is_reported(db, chain):
    target = chain[1]
    row = saved(db, target)
    forged = SimpleNamespace(**{**row, "token_id": "forged"})
    execute(
        db,
        "UPDATE oauth2_token_logs SET token_id = 'forged', row_hash = :h WHERE id = :i",
        h=link_hash(row["prev_hash"], forged, row["seal_seq"]),
        i=target,
    )
    try:
        report = verify(db)
        assert report.problem.kind == "altered" and report.problem.log_id == chain[2]
        assert "prev_hash" in report.problem.message
    finally:
        execute(
            db,
            "UPDATE oauth2_token_logs SET token_id = :t, row_hash = :h WHERE id = :i",
            t=row["token_id"],
            h=row["row_hash"],
            i=target,
        )
    assert verify(db).ok


def test_a_deleted_row_is_reported(db, chain):
    target = chain[2]
    row = saved(db, target)
    execute(db, "DELETE FROM oauth2_token_logs WHERE id = :i", i=target)
    try:
        report = verify(db)
        assert report.problem.kind == "deleted" and report.problem.log_id == chain[3]
        assert str(row["seal_seq"]) in report.problem.message
    finally:
        reinsert(db, row)
    assert verify(db).ok


def test_a_deleted_last_row_is_reported(db, chain):
    target = chain[-1]
    row = saved(db, target)
    execute(db, "DELETE FROM oauth2_token_logs WHERE id = :i", i=target)
    try:
        report = verify(db)
        assert report.problem.kind == "deleted" and report.problem.seal_seq == row["seal_seq"]
    finally:
        reinsert(db, row)
    assert verify(db).ok


def insert_a_row_between_sealed_ones(db, chain) -> int:
    """A new, unsealed row timed just after a sealed one."""
    middle = saved(db, chain[2])
    [inserted] = insert_log_rows(
        db,
        [
            event(
                "issued",
                middle["created_at"] + timedelta(microseconds=1),
                client_id=middle["client_id"],
            )
        ],
    )
    return inserted


def insert_a_copy_with_its_seal(db, chain) -> int:
    """A sealed row copied, seal and hash included, under a new id."""
    inserted = db.scalar("SELECT max(id) + 1000 FROM oauth2_token_logs")
    reinsert(db, {**saved(db, chain[2]), "id": inserted, "token_id": "copied"})
    return inserted


@pytest.mark.parametrize(
    ("insert_row", "kind"),
    [
        # an unsealed row dated inside the sealed range is a straggler: `audit repair`
        pytest.param(insert_a_row_between_sealed_ones, "unsealed", id="unsealed-row"),
        pytest.param(insert_a_copy_with_its_seal, "inserted", id="row-with-a-copied-seal"),
    ],
)
def test_an_inserted_row_is_reported(db, chain, insert_row, kind):
    inserted = insert_row(db, chain)
    try:
        report = verify(db)
        assert report.problem.kind == kind and report.problem.log_id == inserted
        if kind == "unsealed":
            assert "oauth2-server audit repair" in report.problem.message
    finally:
        execute(db, "DELETE FROM oauth2_token_logs WHERE id = :i", i=inserted)
    assert verify(db).ok


def test_a_recorded_head_detects_a_rewritten_chain(db, chain):
    report = verify(db)
    head = (report.head_seq, report.head_hash)
    assert verify(db, head).ok
    assert verify(db, (head[0], "0" * 64)).problem.kind == "altered"
    result = run_cli(db, "audit", "verify", "--expect", f"{head[0]}:{'f' * 64}")
    assert result.returncode == 1 and "rewritten" in result.stdout
