"""A chain sealed by the release before RFC 8785 keeps verifying after the switch
(SECURITY.md "Audit trail integrity"): rows sealed in the old format, then rows sealed by
this release, verify as one chain on the real database, and tampering with a row on
either side of the switch is reported."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from oauth2_server.audit import canonical, sealing
from tests.admin_helpers import event, execute, insert_log_rows, verify
from tests.chain_helpers import seal_now


def legacy_link_hash(prev_hash, row, seal_seq):
    """The sealer of the release before RFC 8785."""
    return canonical.format_hash(canonical.FORMAT_LEGACY, prev_hash, row, seal_seq)


@pytest.fixture
def switched_chain(server, db, unique, monkeypatch):
    """Three rows sealed in format 1, then three in RFC 8785; returns their ids."""
    client = unique("formats")
    now = datetime.now(UTC)
    rows = [
        event("issued", now + timedelta(microseconds=i), client_id=client, token_id=f"t{i}")
        for i in range(3)
    ]
    with monkeypatch.context() as patched:
        patched.setattr(sealing, "link_hash", legacy_link_hash)
        old = insert_log_rows(db, rows)
        seal_now(db)
    now = datetime.now(UTC)
    rows = [
        event("issued", now + timedelta(microseconds=i), client_id=client, token_id=f"t{i}")
        for i in range(3, 6)
    ]
    new = insert_log_rows(db, rows)
    seal_now(db)
    return old + new


def test_rows_sealed_before_and_after_the_switch_verify_as_one_chain(db, switched_chain):
    report = verify(db)
    assert report.ok, report.problem
    assert report.formats.get(canonical.FORMAT_LEGACY, 0) >= 3
    assert report.formats.get(canonical.FORMAT_RFC8785, 0) >= 3


@pytest.mark.parametrize("position", [1, 4], ids=["before the switch", "after the switch"])
def test_tampering_on_either_side_of_the_switch_is_reported(db, switched_chain, position):
    target = switched_chain[position]
    execute(db, "UPDATE oauth2_token_logs SET token_id = 'forged' WHERE id = :i", i=target)
    try:
        report = verify(db)
        assert report.problem is not None
        assert report.problem.kind == "altered" and report.problem.log_id == target
    finally:
        execute(
            db,
            "UPDATE oauth2_token_logs SET token_id = :t WHERE id = :i",
            t=f"t{position}",
            i=target,
        )
    assert verify(db).ok
