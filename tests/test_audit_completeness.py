"""Completeness an auditor can prove (issue #11 item 5), through the real commands on a
fresh database per test (the tampering here rewrites whole chains):

- each seal run signs a checkpoint, listed by `audit checkpoints` and appended to the
  sink file; each retention drop signs a retention record;
- `audit verify`, with no head written down by hand, reports a prefix delete with the
  anchor moved, a partition drop with the anchor moved (PostgreSQL), a row altered with
  every later hash recomputed, a truncated table, a forged retention record; and not a
  legitimate janitor retention drop;
- rows that commit late (an open transaction, a buffered write) end up sealed later and
  verify passes; stragglers are reported until `audit repair` seals them, audited.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from oauth2_server.audit.canonical import link_hash
from oauth2_server.audit.chain import ROW_COLUMNS
from oauth2_server.audit.retention import RETENTION_TYP
from oauth2_server.audit.signing import public_keys, sign_statement, verify_statement
from oauth2_server.db.models import TokenLog
from oauth2_server.storage.keys import all_public_jwks
from tests.admin_helpers import event, execute, insert_log_rows, run_cli
from tests.chain_helpers import fresh_database
from tests.conftest import start_live_server

NO_MARGIN = {"OAUTH2_AUDIT_SEAL_MARGIN": "0"}  # nothing else writes to a fresh database


@pytest.fixture
def fresh(database, tmp_path):
    with fresh_database(database, tmp_path) as db:
        yield db


def plant(db, count: int, at: datetime, client: str = "complete") -> list[int]:
    """`count` rows created at `at` + i µs; their ids."""
    rows = [
        event("issued", at + timedelta(microseconds=i), client_id=client, token_id=f"t{i}")
        for i in range(count)
    ]
    return insert_log_rows(db, rows)


def cli(db, *args: str, env: dict[str, str] | None = None, status: int = 0) -> dict:
    result = run_cli(db, *args, env={**NO_MARGIN, **(env or {})})
    assert result.returncode == status, result.stderr + result.stdout
    return json.loads(result.stdout)


def verify_cli(db, *args: str, env: dict[str, str] | None = None) -> dict:
    result = run_cli(db, "audit", "verify", *args, env={**NO_MARGIN, **(env or {})})
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    assert (result.returncode == 0) == report["ok"]
    return report


def as_dict(details) -> dict:
    """A JSON column as read through a plain SQL query (text on SQLite)."""
    return details if isinstance(details, dict) else json.loads(details)


def sealed_row(db, seq: int):
    with db.session() as session:
        return session.execute(select(*ROW_COLUMNS).where(TokenLog.seal_seq == seq)).one()


def move_anchor_to(db, seq: int) -> None:
    """What a tamperer does after deleting rows 1..seq: point the chain's start there."""
    row = sealed_row(db, seq)
    execute(
        db,
        "UPDATE oauth2_audit_chain SET anchor_seq = :s, anchor_hash = :h, "
        "anchor_created_at = :c, anchor_log_id = :i",
        s=seq,
        h=row.row_hash,
        c=row.created_at,
        i=row.id,
    )


def sealed_chain(db, count: int = 6) -> list[int]:
    ids = plant(db, count, datetime.now(UTC) - timedelta(seconds=30))
    sealed = cli(db, "audit", "seal", "--delay", "0")
    assert sealed["sealed"] >= count and sealed["checkpoint_seq"] == sealed["sealed"]
    assert verify_cli(db)["ok"]
    return ids


def test_a_seal_run_signs_a_checkpoint_listed_and_copied_to_the_sink(fresh, tmp_path):
    sink = tmp_path / "checkpoints.jsonl"
    plant(fresh, 4, datetime.now(UTC) - timedelta(seconds=30))
    env = {"OAUTH2_AUDIT_CHECKPOINT_SINK": str(sink)}
    sealed = cli(fresh, "audit", "seal", "--delay", "0", env=env)
    seq = sealed["checkpoint_seq"]
    assert sealed["sealed"] == seq >= 4
    [listed] = cli(fresh, "audit", "checkpoints", "--json")["checkpoints"]
    with fresh.session() as session:
        keys = public_keys(all_public_jwks(session))
    payload = verify_statement(listed["jws"], keys, "audit-checkpoint+jwt")
    assert payload["seq"] == seq and payload["hash"] == sealed_row(fresh, seq).row_hash
    assert payload["prev"] is None and payload["anchor"]["seq"] == 0
    [line] = sink.read_text().splitlines()
    assert json.loads(line)["jws"] == listed["jws"]
    report = verify_cli(fresh)
    assert report["ok"] and report["checkpoints"] == 1 and report["checkpoint_seq"] == seq
    details = fresh.scalar("SELECT details FROM oauth2_token_logs WHERE action = 'audit_sealed'")
    assert as_dict(details)["checkpoint_seq"] == seq
    # a second run chains to the first
    plant(fresh, 2, datetime.now(UTC) - timedelta(seconds=20))
    second = cli(fresh, "audit", "seal", "--delay", "0", env=env)
    last_line = json.loads(sink.read_text().splitlines()[-1])
    payload = verify_statement(last_line["jws"], keys, "audit-checkpoint+jwt")
    assert payload["prev"] == {"seq": seq, "hash": sealed_row(fresh, seq).row_hash}
    assert payload["seq"] == second["checkpoint_seq"]


def test_a_prefix_delete_with_the_anchor_moved_is_detected(fresh):
    sealed_chain(fresh)
    three = sealed_row(fresh, 3)  # its prev_hash is row 2's hash: a valid-looking anchor
    execute(fresh, "DELETE FROM oauth2_token_logs WHERE seal_seq <= 2")
    assert verify_cli(fresh)["problem"]["kind"] == "deleted"  # the gap at the start
    execute(
        fresh,
        "UPDATE oauth2_audit_chain SET anchor_seq = 2, anchor_hash = :h",
        h=three.prev_hash,
    )
    report = verify_cli(fresh)
    assert report["problem"]["kind"] == "deleted"
    assert "retention record" in report["problem"]["message"]


def test_a_janitor_retention_drop_is_not_reported_but_a_later_prefix_delete_is(fresh):
    long_ago = datetime.now(UTC) - timedelta(days=200)
    plant(fresh, 3, long_ago, client="old")
    plant(fresh, 4, datetime.now(UTC) - timedelta(seconds=30), client="recent")
    env = {"OAUTH2_AUDIT_SEAL_DELAY": "0"}
    report = cli(fresh, "janitor", env=env)
    assert report["audit_rows_removed"] == 3
    assert report["retention_records"] == [{"first_seq": 1, "last_seq": 3, "rows": 3}]
    if fresh.backend == "postgresql":
        assert f"oauth2_token_logs_p{long_ago:%Y%m}" in report["partitions_dropped"]
    assert fresh.count("oauth2_token_logs", "client_id = 'old'") == 0
    verified = verify_cli(fresh)
    assert verified["ok"], verified["problem"]
    assert verified["anchor_seq"] == 3 and verified["retention_records"] == 1
    [record] = cli(fresh, "audit", "checkpoints", "--retention")["retention"]
    assert record["policy_days"] == 90 and record["by"].startswith("janitor (cli:")
    assert record["first_seq"] == 1 and record["last_seq"] == 3
    # beyond the record: row 4 deleted and the anchor moved onto it
    move_anchor_to(fresh, 4)
    execute(fresh, "DELETE FROM oauth2_token_logs WHERE seal_seq = 4")
    problem = verify_cli(fresh)["problem"]
    assert problem["kind"] == "deleted" and "retention record" in problem["message"]


def test_a_partition_drop_with_the_anchor_moved_is_detected(fresh):
    if fresh.backend != "postgresql":
        pytest.skip("month partitions are PostgreSQL's")
    long_ago = datetime.now(UTC) - timedelta(days=200)
    plant(fresh, 3, long_ago, client="old")
    plant(fresh, 3, datetime.now(UTC) - timedelta(seconds=30))
    cli(
        fresh,
        "janitor",
        env={"OAUTH2_AUDIT_SEAL_DELAY": "0", "OAUTH2_AUDIT_RETENTION_DAYS": "3650"},
    )
    assert verify_cli(fresh)["ok"]
    move_anchor_to(fresh, 3)
    execute(fresh, f"DROP TABLE oauth2_token_logs_p{long_ago:%Y%m}")
    problem = verify_cli(fresh)["problem"]
    assert problem["kind"] == "deleted" and "retention record" in problem["message"]


def test_a_row_altered_and_every_later_hash_recomputed_is_detected(fresh):
    sealed_chain(fresh)
    head = int(fresh.scalar("SELECT head_seq FROM oauth2_audit_chain"))
    prev = sealed_row(fresh, 1).row_hash
    for seq in range(2, head + 1):
        row = sealed_row(fresh, seq)
        forged = SimpleNamespace(
            **{**row._asdict(), "token_id": "forged" if seq == 2 else row.token_id}
        )
        digest = link_hash(prev, forged, seq)
        execute(
            fresh,
            "UPDATE oauth2_token_logs SET token_id = :t, prev_hash = :p, row_hash = :h "
            "WHERE seal_seq = :s",
            t=forged.token_id,
            p=prev,
            h=digest,
            s=seq,
        )
        prev = digest
    execute(fresh, "UPDATE oauth2_audit_chain SET head_hash = :h", h=prev)
    problem = verify_cli(fresh)["problem"]
    assert problem["kind"] == "altered" and "signed checkpoint" in problem["message"]
    assert problem["seal_seq"] == head


def test_a_truncated_table_is_detected_even_with_the_chain_row_reset(fresh, tmp_path):
    sink = tmp_path / "sink.jsonl"
    env = {"OAUTH2_AUDIT_CHECKPOINT_SINK": str(sink)}
    plant(fresh, 5, datetime.now(UTC) - timedelta(seconds=30))
    cli(fresh, "audit", "seal", "--delay", "0", env=env)
    execute(fresh, "DELETE FROM oauth2_token_logs")
    assert verify_cli(fresh)["problem"]["kind"] == "deleted"
    execute(
        fresh,
        "UPDATE oauth2_audit_chain SET head_seq = 0, head_hash = :g, head_created_at = NULL, "
        "head_log_id = NULL, sealed_through = NULL",
        g="0" * 64,
    )
    problem = verify_cli(fresh)["problem"]
    assert problem["kind"] == "deleted" and "beyond the chain's head" in problem["message"]
    # the checkpoints deleted too: only the sink's copy is left to tell
    execute(fresh, "DELETE FROM oauth2_audit_checkpoints")
    assert verify_cli(fresh)["ok"]
    problem = verify_cli(fresh, "--checkpoints", str(sink))["problem"]
    assert problem["kind"] == "deleted" and "missing" in problem["message"]


def test_a_forged_retention_record_is_detected(fresh):
    sealed_chain(fresh)
    two = sealed_row(fresh, 2)
    kid = fresh.scalar("SELECT kid FROM oauth2_signing_keys WHERE status = 'current'")
    attacker = SimpleNamespace(kid=kid, private_key=ec.generate_private_key(ec.SECP256R1()))
    payload = {
        "first_seq": 1,
        "last_seq": 2,
        "rows": 2,
        "last_hash": two.row_hash,
        "prev_anchor": {"seq": 0, "hash": "0" * 64},
    }
    now = datetime.now(UTC)
    execute(
        fresh,
        "INSERT INTO oauth2_audit_retention (first_seq, last_seq, rows, from_at, to_at, "
        "last_hash, policy_days, actor, created_at, kid, statement) VALUES "
        "(1, 2, 2, :t, :t, :h, 90, 'janitor', :t, :k, :s)",
        t=now,
        h=two.row_hash,
        k=kid,
        s=sign_statement(attacker, RETENTION_TYP, payload),
    )
    move_anchor_to(fresh, 2)
    execute(fresh, "DELETE FROM oauth2_token_logs WHERE seal_seq <= 2")
    problem = verify_cli(fresh)["problem"]
    assert problem["kind"] == "forged" and "does not verify" in problem["message"]


def test_a_row_committing_after_a_seal_run_is_sealed_later(fresh):
    """A transaction open across a seal run (PostgreSQL: its start holds the horizon
    back; SQLite: the sealer waits for the write lock) commits a row dated before the
    run; the next run seals it with a later seq and verify passes."""
    cli(fresh, "audit", "seal", "--delay", "0")  # the chain has started
    margin = {"OAUTH2_AUDIT_SEAL_MARGIN": "1"}
    with fresh.engine.connect() as connection:
        transaction = connection.begin()
        connection.execute(
            TokenLog.__table__.insert(),
            [event("issued", datetime.now(UTC), client_id="late").row()],
        )
        time.sleep(1.5)
        if fresh.backend == "postgresql":  # SQLite: the sealer would wait on our lock
            cli(fresh, "audit", "seal", "--delay", "0", env=margin)
        transaction.commit()
    time.sleep(1.1)
    sealed = cli(fresh, "audit", "seal", "--delay", "0", env=margin)
    assert sealed["sealed"] >= 1
    late = fresh.scalar("SELECT seal_seq FROM oauth2_token_logs WHERE client_id = 'late'")
    assert late is not None
    report = verify_cli(fresh)
    assert report["ok"], report["problem"]
    assert report["stragglers"] == 0


def test_a_buffered_row_flushed_after_a_seal_run_is_sealed_later(fresh, tmp_path):
    """A failed client authentication is a buffered row; written after a seal run, past
    `RESTAMP_AFTER`, it is stamped at its write (event time in `details.occurred_at`)
    and sealed by the next run instead of becoming a straggler."""
    cli(fresh, "audit", "seal", "--delay", "0")
    live = start_live_server(
        fresh, tmp_path, OAUTH2_AUDIT_FLUSH_INTERVAL="4", OAUTH2_AUDIT_BATCH_SIZE="1000"
    )
    try:
        client_id, _ = fresh.create_client(name="buffered")
        answer = live.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(client_id, "wrong secret"),
        )
        assert answer.status_code == 401
        time.sleep(1.5)
        margin = {"OAUTH2_AUDIT_SEAL_MARGIN": "1"}
        cli(fresh, "audit", "seal", "--delay", "0", env=margin)  # the row is still buffered
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not fresh.count(
            "oauth2_token_logs", "client_id = :c", c=client_id
        ):
            time.sleep(0.2)
    finally:
        live.stop()
    time.sleep(1.1)
    cli(fresh, "audit", "seal", "--delay", "0", env={"OAUTH2_AUDIT_SEAL_MARGIN": "1"})
    rows = fresh.rows(
        "SELECT seal_seq, details FROM oauth2_token_logs WHERE client_id = :c", c=client_id
    )
    assert rows and all(row.seal_seq is not None for row in rows)
    assert "occurred_at" in as_dict(rows[0].details)
    report = verify_cli(fresh)
    assert report["ok"], report["problem"]


def test_stragglers_are_reported_until_repair_seals_them_audited(fresh, tmp_path):
    sealed_chain(fresh, 3)
    through = fresh.scalar("SELECT sealed_through FROM oauth2_audit_chain")
    assert through is not None
    # what an older release left: a row inside the sealed range, never sealed
    [straggler] = plant(fresh, 1, datetime.now(UTC) - timedelta(seconds=25), client="straggler")
    problem = verify_cli(fresh)["problem"]
    assert problem["kind"] == "unsealed" and problem["log_id"] == straggler
    assert "oauth2-server audit repair" in problem["message"]
    dry = cli(fresh, "audit", "repair", "--dry-run")
    assert dry["dry_run"] and dry["rows"] == 1 and dry["ids"] == [straggler]
    assert fresh.scalar("SELECT seal_seq FROM oauth2_token_logs WHERE id = :i", i=straggler) is None
    sink = tmp_path / "sink.jsonl"
    repaired = cli(fresh, "audit", "repair", env={"OAUTH2_AUDIT_CHECKPOINT_SINK": str(sink)})
    head = int(fresh.scalar("SELECT head_seq FROM oauth2_audit_chain"))
    assert repaired["rows"] == 1 and repaired["ids"] == [straggler]
    assert repaired["first_seq"] == repaired["last_seq"] == repaired["checkpoint_seq"] == head
    assert fresh.scalar("SELECT seal_seq FROM oauth2_token_logs WHERE id = :i", i=straggler) == head
    assert json.loads(sink.read_text().splitlines()[-1])["seq"] == head
    audited = fresh.rows("SELECT details FROM oauth2_token_logs WHERE action = 'audit_repaired'")
    assert len(audited) == 1
    details = as_dict(audited[0].details)
    assert details["ids"] == [straggler] and details["via"] == "cli" and details["operator"]
    report = verify_cli(fresh)
    assert report["ok"], report["problem"]
    assert report["checkpoint_seq"] == head


def test_a_failing_sink_never_blocks_sealing(fresh, tmp_path):
    plant(fresh, 2, datetime.now(UTC) - timedelta(seconds=30))
    env = {"OAUTH2_AUDIT_CHECKPOINT_SINK": str(tmp_path / "missing" / "sink.jsonl")}
    result = run_cli(fresh, "audit", "seal", "--delay", "0", env={**NO_MARGIN, **env})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["checkpoint_seq"] >= 2
    assert "sink" in result.stderr and "not written" in result.stderr
    assert verify_cli(fresh)["ok"]


def test_checkpoints_are_posted_to_a_webhook_sink(fresh):
    received: list[dict] = []

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        plant(fresh, 2, datetime.now(UTC) - timedelta(seconds=30))
        url = f"http://127.0.0.1:{server.server_port}/checkpoints"
        sealed = cli(
            fresh, "audit", "seal", "--delay", "0", env={"OAUTH2_AUDIT_CHECKPOINT_SINK": url}
        )
    finally:
        server.shutdown()
        thread.join()
    [item] = received
    assert item["type"] == "checkpoint" and item["seq"] == sealed["checkpoint_seq"]
    assert item["jws"].count(".") == 2


def test_a_month_holding_a_repaired_straggler_is_dropped_with_the_next(fresh):
    """PostgreSQL: a straggler dated in an old month, repaired at the head of the chain,
    makes that month alone not the start of the chain; retention drops it together with
    the next month, under one signed record, and verify passes."""
    if fresh.backend != "postgresql":
        pytest.skip("month partitions are PostgreSQL's")
    cli(fresh, "audit", "repair", "--dry-run")  # makes the signing key: nothing sealed yet
    execute(fresh, "DELETE FROM oauth2_token_logs")  # a chain whose first rows are all old
    now = datetime.now(UTC)
    older, old = now - timedelta(days=230), now - timedelta(days=180)
    plant(fresh, 3, older, client="older")
    plant(fresh, 3, old, client="old")
    cli(fresh, "audit", "seal", "--delay", "0")
    [straggler] = plant(fresh, 1, older + timedelta(seconds=5), client="older")
    assert cli(fresh, "audit", "repair")["first_seq"] == 7
    report = cli(fresh, "janitor", env={"OAUTH2_AUDIT_SEAL_DELAY": "0"})
    names = [f"oauth2_token_logs_p{older:%Y%m}", f"oauth2_token_logs_p{old:%Y%m}"]
    assert report["partitions_dropped"][:2] == names
    assert report["retention_records"][0] == {"first_seq": 1, "last_seq": 7, "rows": 7}
    assert fresh.count("oauth2_token_logs", "id = :i", i=straggler) == 0
    verified = verify_cli(fresh)
    assert verified["ok"], verified["problem"]
    assert verified["anchor_seq"] == 7
