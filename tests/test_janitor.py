"""`oauth2-server janitor`: expired codes, access-token rows and dead refresh families
deleted in batches, safely from several processes at once; audit rows past retention
removed once sealed (whole month partitions on PostgreSQL), the chain still verifying."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert

from oauth2_server.db.models import AccessToken, AuthorizationCode, RefreshToken
from tests.admin_helpers import cli_json, event, insert_log_rows, run_cli, verify
from tests.chain_helpers import fresh_database
from tests.conftest import ROOT, free_port, server_env

TABLES = ("oauth2_authorization_codes", "oauth2_access_tokens", "oauth2_refresh_tokens")


def plant(db, unique):
    """Expired and live rows of every kind; returns (expired, live) keys per table."""
    now = datetime.now(UTC)
    old, soon = now - timedelta(days=2), now + timedelta(hours=1)
    user = db.create_user(unique("janitor"))
    expired = {t: [] for t in TABLES}
    live = {t: [] for t in TABLES}
    client = unique("jc")
    access, codes, refresh = [], [], []

    def access_row(issued_at, expires_at):
        jti = str(uuid.uuid4())
        access.append(
            dict(
                jti=jti,
                client_id=client,
                subject="s",
                scope="",
                grant_type="x",
                issued_at=issued_at,
                expires_at=expires_at,
            )
        )
        return jti

    def code_row(created_at, expires_at):
        codes.append(
            dict(
                code_hash=uuid.uuid4().hex * 2,
                client_id=client,
                user_id=user.id,
                scope="",
                code_challenge="c",
                code_challenge_method="S256",
                created_at=created_at,
                expires_at=expires_at,
            )
        )

    def refresh_row(family, expires_at):
        refresh.append(
            dict(
                token_hash=uuid.uuid4().hex * 2,
                family_id=family,
                client_id=client,
                user_id=user.id,
                scope="",
                issued_at=old,
                expires_at=expires_at,
            )
        )

    for i in range(150):
        expired["oauth2_access_tokens"].append(access_row(old, old + timedelta(hours=1)))
        if i % 10 == 0:
            live["oauth2_access_tokens"].append(access_row(now, soon))
        code_row(old, old + timedelta(seconds=60))
        family = str(uuid.uuid4())
        for j in range(2):  # a dead family: every token expired
            refresh_row(family, old + timedelta(minutes=j + 1))
    # a code that expired a moment ago is kept for replay detection
    code_row(now, now - timedelta(seconds=1))
    # a live family whose first token expired: all of it stays
    family = str(uuid.uuid4())
    for expires in (old, soon):
        refresh_row(family, expires)
    with db.session() as session:
        session.execute(insert(AccessToken), access)
        session.execute(insert(AuthorizationCode), codes)
        session.execute(insert(RefreshToken), refresh)
    expired["oauth2_authorization_codes"] = [c["code_hash"] for c in codes[:-1]]
    live["oauth2_authorization_codes"] = [codes[-1]["code_hash"]]
    expired["oauth2_refresh_tokens"] = [r["token_hash"] for r in refresh[:-2]]
    live["oauth2_refresh_tokens"] = [r["token_hash"] for r in refresh[-2:]]
    return expired, live


KEY = {
    "oauth2_authorization_codes": "code_hash",
    "oauth2_access_tokens": "jti",
    "oauth2_refresh_tokens": "token_hash",
}


def present(db, table, keys):
    found = set()
    for start in range(0, len(keys), 100):
        chunk = keys[start : start + 100]
        marks = ", ".join(f":k{i}" for i in range(len(chunk)))
        rows = db.rows(
            f"SELECT {KEY[table]} FROM {table} WHERE {KEY[table]} IN ({marks})",  # noqa: S608
            **{f"k{i}": k for i, k in enumerate(chunk)},
        )
        found |= {r[0] for r in rows}
    return found


def test_two_concurrent_janitors_delete_each_expired_row_once_and_nothing_live(db, unique):
    expired, live = plant(db, unique)
    before = {t: db.count(t) for t in TABLES}
    env = server_env(db.url, db.keys, free_port())
    command = [sys.executable, "-m", "oauth2_server", "janitor", "--batch-size", "20", "--no-seal"]
    processes = [
        subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    reports = []
    for process in processes:
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, err
        reports.append(json.loads(out))
    for table in TABLES:
        assert not present(db, table, expired[table]), table
        assert present(db, table, live[table]) == set(live[table]), table
        removed = before[table] - db.count(table)
        assert sum(r["deleted"][table] for r in reports) == removed >= len(expired[table])


def test_janitor_vacuums_the_token_tables_it_deleted_from(db, unique):
    """PostgreSQL: a run that deleted expired rows VACUUMs those tables itself (step 6 of
    `audit.janitor`), so their space is reused by new tokens even when autovacuum is off
    or behind: the dead rows it left are gone from the table's statistics."""
    if db.backend != "postgresql":
        report = cli_json(db, "janitor", "--no-seal")
        assert report["vacuumed"] == []  # SQLite: nothing to vacuum per table
        return
    plant(db, unique)
    stats = "SELECT vacuum_count + autovacuum_count FROM pg_stat_user_tables WHERE relname = :t"
    vacuums = db.scalar(stats, t="oauth2_access_tokens")
    report = cli_json(db, "janitor", "--no-seal")
    assert report["deleted"]["oauth2_access_tokens"] >= 150
    assert "oauth2_access_tokens" in report["vacuumed"]
    assert "oauth2_refresh_tokens" in report["vacuumed"]
    # the statistics are published asynchronously
    assert db.rows_eventually(f"SELECT 1 WHERE ({stats}) > :n", t="oauth2_access_tokens", n=vacuums)
    again = cli_json(db, "janitor", "--no-seal")  # nothing left to delete: no VACUUM
    assert "oauth2_access_tokens" not in again["vacuumed"]


def test_old_audit_rows_are_removed_once_sealed_and_the_chain_still_verifies(database, tmp_path):
    """On a fresh database (rows dated 200 days ago may only be planted before a chain's
    first seal): the janitor seals them, removes them with a signed retention record,
    and the chain verifies."""
    long_ago = datetime.now(UTC) - timedelta(days=200)
    client = "retention"
    with fresh_database(database, tmp_path) as db:
        insert_log_rows(
            db,
            [event("issued", long_ago + timedelta(seconds=i), client_id=client) for i in range(3)],
        )
        result = run_cli(
            db, "janitor", env={"OAUTH2_AUDIT_SEAL_DELAY": "1", "OAUTH2_AUDIT_SEAL_MARGIN": "1"}
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert db.count("oauth2_token_logs", "client_id = :c", c=client) == 0
        assert report["audit_rows_removed"] >= 3
        assert report["retention_records"][0]["first_seq"] == 1
        month = f"oauth2_token_logs_p{long_ago:%Y%m}"
        if db.backend == "postgresql":
            assert month in report["partitions_dropped"]
            assert db.scalar("SELECT to_regclass(:n)", n=month) is None
            now = datetime.now(UTC)
            for ahead in range(3):
                index = now.year * 12 + now.month - 1 + ahead
                name = f"oauth2_token_logs_p{index // 12}{index % 12 + 1:02d}"
                assert db.scalar("SELECT to_regclass(:n)", n=name) is not None, name
            assert db.count("oauth2_token_logs_default") == 0
        report = verify(db)
        assert report.ok, report.problem
        assert report.retention_records == 1
