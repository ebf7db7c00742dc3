"""The audit trail cannot be poisoned or silenced (issue #8; DESIGN.md invariants 6, 10).

Every value of an `oauth2_token_logs` row is bounded before it is written (column
lengths from the table definition; NUL and lone surrogates replaced; `details` bounded), on
the batched path (`AuditBuffer`) and in a change's own transaction (`record`). A batch the
database refuses is split and the refused rows are written in minimal form with the flag
`malformed`; an unreachable database keeps the rows; the buffer is capped, drops the oldest
and counts them in /readyz and /metrics.

Live-server tests drive the public surface; the split and outage tests run `AuditBuffer`
with a real engine against the test database (the outage one against a closed port).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from oauth2_server.audit.bounds import DETAILS_MAX_CHARS, DETAILS_MAX_STRING, TRUNCATION_MARK
from oauth2_server.audit.log import MALFORMED, AuditBuffer, AuditEvent, RequestContext, record
from oauth2_server.db.engine import create_engine
from oauth2_server.db.models import TokenLog
from oauth2_server.storage.fastpath import FastStore
from tests.conftest import free_port

TABLE = TokenLog.__table__


def poll(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Call `check` until it returns something truthy (the buffer flushes in the
    background); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value {value!r}")
        time.sleep(0.1)


def assert_cut(stored: str, original: str, limit: int) -> None:
    """`stored` is `original` cut to `limit` characters: a prefix, "…" and the first 12
    hex digits of SHA-256 of the whole value."""
    digest = hashlib.sha256(original.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    assert len(stored) <= limit
    assert stored.endswith(TRUNCATION_MARK + digest), stored
    prefix = stored[: -len(TRUNCATION_MARK + digest)]
    assert prefix and original.startswith(prefix)


def as_json(value: Any) -> Any:
    """JSON columns come back parsed from PostgreSQL and as text from SQLite."""
    return json.loads(value) if isinstance(value, str) else value


def audit_rows(db: Any, client_id: str, action: str, columns: str = "*") -> list[Any]:
    return db.rows(
        f"SELECT {columns} FROM oauth2_token_logs WHERE client_id = :c AND action = :a "  # noqa: S608
        "ORDER BY id",
        c=client_id,
        a=action,
    )


def audit_lines(caplog: Any) -> list[str]:
    """What `oauth2_server.audit` logged."""
    return [r.getMessage() for r in caplog.records if r.name == "oauth2_server.audit"]


def introspect(live: Any, client_id: str, secret: str, token: str, **kwargs: Any) -> Any:
    data = {"token": token, **kwargs.pop("data", {})}
    return live.post("/oauth2/introspect", auth=(client_id, secret), data=data, **kwargs)


# -- (a) an over-long value on the batched path ----------------------------------------


def test_overlong_grant_type_at_introspection_does_not_silence_the_audit_trail(
    start_server, db, unique
):
    """RFC 7662 §2.1 introspection with a wrong secret and a 300-character `grant_type`:
    the `client_auth_failed` row keeps a cut `grant_type` (column: 100), and the
    `introspected` rows of later requests keep being written."""
    live = start_server()
    client_id, secret = db.create_client(name=unique("rs"))
    token = live.client_credentials_token(client_id, secret)
    hostile = "urn:" + "x" * 296

    refused = introspect(live, client_id, "wrong-secret", token, data={"grant_type": hostile})
    assert refused.status_code == 401
    for _ in range(2):
        answer = introspect(live, client_id, secret, token)
        assert answer.status_code == 200 and answer.json()["active"] is True

    poll(lambda: len(audit_rows(db, client_id, "introspected")) == 2, what="introspected rows")
    (failed,) = audit_rows(db, client_id, "client_auth_failed", "grant_type, flags")
    assert_cut(failed.grant_type, hostile, 100)
    assert MALFORMED not in as_json(failed.flags)

    # the trail is not silenced: later rows keep coming
    assert introspect(live, client_id, secret, token).status_code == 200
    poll(lambda: len(audit_rows(db, client_id, "introspected")) == 3, what="a later row")
    assert "audit rows failed" not in live.log()
    assert "refused by the database" not in live.log()


# -- (b) an over-long client IP in a token's own transaction ---------------------------


def test_overlong_forwarded_ip_is_bounded_and_the_token_is_issued(start_server, db, unique):
    """A 200-character "IP" in X-Forwarded-For from a trusted proxy: the token request
    (RFC 6749 §4.4) still answers 200, and its `issued` row (same transaction) and the
    batched `client_auth_failed` row carry the IP cut to the column's 64 characters."""
    live = start_server(OAUTH2_FORWARDED_ALLOW_IPS="127.0.0.1")
    client_id, secret = db.create_client(name=unique("svc"))
    hostile_ip = "203.0.113." + "7" * 190
    headers = {"X-Forwarded-For": hostile_ip}

    issued = live.post(
        "/oauth2/token",
        auth=(client_id, secret),
        data={"grant_type": "client_credentials"},
        headers=headers,
    )
    assert issued.status_code == 200, issued.text
    (row,) = audit_rows(db, client_id, "issued", "ip")
    assert_cut(row.ip, hostile_ip, 64)

    failed = live.post(
        "/oauth2/token",
        auth=(client_id, "wrong-secret"),
        data={"grant_type": "client_credentials"},
        headers=headers,
    )
    assert failed.status_code == 401
    (row,) = poll(lambda: audit_rows(db, client_id, "client_auth_failed", "ip"), what="row")
    assert_cut(row.ip, hostile_ip, 64)


# -- (c) NUL characters, lone surrogates and huge values --------------------------------


def test_huge_user_agent_and_non_ascii_grant_type_are_stored_bounded(start_server, db, unique):
    """A 5,000-character User-Agent and a `grant_type` of 150 astral characters (one
    character each for PostgreSQL's varchar(100), four bytes in UTF-8): the row is written
    with both cut to their columns; later rows keep coming. (A NUL in a form value is
    refused by the form parser with 400; NUL and surrogates are covered below.)"""
    live = start_server()
    client_id, secret = db.create_client(name=unique("rs"))
    token = live.client_credentials_token(client_id, secret)
    agent = "Mozilla/5.0 " + "z" * 5000
    grant_type = "\U0001f600" * 150

    refused = introspect(
        live,
        client_id,
        "wrong-secret",
        token,
        data={"grant_type": grant_type},
        headers={"User-Agent": agent},
    )
    assert refused.status_code == 401
    assert introspect(live, client_id, secret, token).status_code == 200

    poll(lambda: audit_rows(db, client_id, "introspected"), what="the introspected row")
    (row,) = audit_rows(db, client_id, "client_auth_failed", "grant_type, user_agent, flags")
    assert_cut(row.grant_type, grant_type, 100)
    assert_cut(row.user_agent, agent, 400)
    assert MALFORMED not in as_json(row.flags)


def test_hostile_details_are_bounded_in_the_changes_transaction(db, unique):
    """`record()` (a change's own transaction) with NUL, lone surrogates, a huge string,
    NaN, a huge integer, deep nesting, a long list and non-JSON values in `details`: one row,
    every string storable and bounded; an oversized whole is kept as cut JSON text."""
    client_id = unique("hostile")
    hostile = {
        "nul": "a\x00b",
        "surrogate": "x\ud800y",
        "huge": "h" * 50_000,
        "nan": float("nan"),
        "big": 10**5000,
        "deep": {"1": {"2": {"3": {"4": {"5": {"6": {"7": "too deep"}}}}}}},
        "list": list(range(1000)),
        "when": datetime(2026, 1, 2, tzinfo=UTC),
        "k\x00" + "k" * 200: "key",
    }
    oversized = {f"key{i}": "v" * 900 for i in range(100)}
    context = RequestContext(ip="i" * 300, user_agent="ua\x00\udfff", request_id="r" * 100)
    with db.session() as session:
        record(
            session,
            AuditEvent("admin_test", context, client_id=client_id, details=hostile),
            AuditEvent("admin_test", client_id=client_id, details=oversized, flags=["f" * 99]),
        )
    first, second = audit_rows(
        db, client_id, "admin_test", "ip, user_agent, request_id, details, flags"
    )

    assert_cut(first.ip, "i" * 300, 64)
    assert first.user_agent == "ua\ufffd\ufffd"
    assert_cut(first.request_id, "r" * 100, 64)
    details = as_json(first.details)
    assert details["nul"] == "a\ufffdb"
    assert details["surrogate"] == "x\ufffdy"
    assert_cut(details["huge"], "h" * 50_000, DETAILS_MAX_STRING)
    assert details["nan"] == "nan"
    assert details["big"].startswith(TRUNCATION_MARK)
    assert "too deep" not in json.dumps(details["deep"])
    assert len(details["list"]) == 101 and details["list"][-1].startswith(TRUNCATION_MARK)
    assert details["when"].startswith("2026-01-02")
    (key,) = (k for k in details if k.startswith("k\ufffd"))
    assert len(key) <= 64

    kept = as_json(second.details)
    assert list(kept) == ["truncated"] and len(kept["truncated"]) <= DETAILS_MAX_CHARS
    assert len(as_json(second.flags)[0]) <= 40


# -- (d) a refused row: split, then minimal form -----------------------------------------


@contextmanager
def database_refuses(db: Any, client_id: str) -> Iterator[None]:
    """Make the database itself refuse audit rows naming `client_id` (a CHECK constraint
    on PostgreSQL, a trigger on SQLite): what no bounded value can cause through the
    public surface, so the split path is exercised on a real database."""
    name = f"refuse_{uuid.uuid4().hex[:12]}"
    if db.backend == "postgresql":
        create = (
            f"ALTER TABLE oauth2_token_logs ADD CONSTRAINT {name} "
            f"CHECK (client_id IS DISTINCT FROM '{client_id}')"
        )
        drop = f"ALTER TABLE oauth2_token_logs DROP CONSTRAINT {name}"
    else:
        create = (
            f"CREATE TRIGGER {name} BEFORE INSERT ON oauth2_token_logs "
            f"WHEN NEW.client_id = '{client_id}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        drop = f"DROP TRIGGER {name}"
    with db.engine.begin() as connection:
        connection.exec_driver_sql(create)
    try:
        yield
    finally:
        with db.engine.begin() as connection:
            connection.exec_driver_sql(drop)


async def _write_through_buffer(url: str, events: list[AuditEvent]) -> tuple[int, dict]:
    """Queue `events` in an AuditBuffer whose writer is the server's own (FastStore's COPY
    on PostgreSQL) on a real engine, flush once; (rows written, buffer figures)."""
    engine = create_engine(url, 2)
    fast = await FastStore.create(engine, 2)
    try:
        buffer = AuditBuffer(lambda rows: fast.copy_rows(TABLE, rows), 3600, 1000)
        for event in events:
            buffer.add(event)
        return await buffer.flush(), buffer.figures()
    finally:
        await fast.close()
        await engine.dispose()


def test_refused_rows_are_split_out_and_written_in_minimal_form(db, unique, caplog):
    """A batch of 8 with 2 rows the database refuses: the 6 others are written whole, the
    2 in minimal form (action, time, risk score, flag `malformed`, nothing else), one
    log line for the batch; nothing stays queued."""
    action = unique("audit_split")[:40]
    refused_client = unique("refused")
    base = datetime.now(UTC)  # now: a row dated ahead would sit unsealed inside a sealed range
    events = [
        AuditEvent(
            action,
            RequestContext(ip="198.51.100.1", request_id=f"req-{i}"),
            client_id=refused_client if i in (2, 5) else f"{refused_client}-{i}",
            risk_score=0.5 if i < 4 else None,
            details={"i": i},
            created_at=base + timedelta(seconds=i),
        )
        for i in range(8)
    ]
    caplog.set_level(logging.WARNING, logger="oauth2_server.audit")
    with database_refuses(db, refused_client):
        written, figures = asyncio.run(_write_through_buffer(db.url, events))

    assert written == 8
    assert figures == {"buffered_rows": 0, "dropped_rows": 0, "malformed_rows": 2}
    rows = db.rows(
        "SELECT client_id, request_id, ip, risk_score, flags, details FROM oauth2_token_logs "
        "WHERE action = :a ORDER BY created_at",
        a=action,
    )
    assert [row.client_id for row in rows] == [
        None if i in (2, 5) else f"{refused_client}-{i}" for i in range(8)
    ]
    for i, row in enumerate(rows):
        if i in (2, 5):
            assert (row.request_id, row.ip, as_json(row.details)) == (None, None, {})
            assert as_json(row.flags) == [MALFORMED]
        else:
            assert row.request_id == f"req-{i}" and as_json(row.details) == {"i": i}
    # the risk score is kept; a flagged row scores at least 0.01 (flag queries need > 0)
    assert [float(row.risk_score) for row in rows] == [0.5] * 4 + [0.0, 0.01, 0.0, 0.0]
    lines = [line for line in audit_lines(caplog) if "refused by the database" in line]
    assert len(lines) == 1 and lines[0].startswith("2 audit rows")


# -- (e) the buffer's bound ---------------------------------------------------------------


def test_unreachable_database_keeps_rows_up_to_the_bound_dropping_the_oldest(
    db, unique, tmp_path, caplog
):
    """While the database is unreachable (a real engine on a closed port; SQLite: a file
    in a missing directory), rows stay queued up to `max_rows`; past it the oldest are
    dropped and counted, with one log line per episode. Once the database answers, the
    kept rows are written in order."""
    if db.backend == "postgresql":
        dead_url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    else:
        dead_url = f"sqlite+aiosqlite:///{tmp_path}/missing/dir/audit.db"
    action = unique("audit_cap")[:40]
    caplog.set_level(logging.WARNING, logger="oauth2_server.audit")

    async def scenario() -> dict[str, Any]:
        dead = create_engine(dead_url, 1)
        live = create_engine(db.url, 2)
        fast = await FastStore.create(live, 2)
        target = {"store": FastStore(dead, None)}  # the SQLAlchemy path on the dead engine
        buffer = AuditBuffer(lambda rows: target["store"].copy_rows(TABLE, rows), 3600, 4, 5)
        seen: dict[str, Any] = {}
        try:
            for i in range(12):
                buffer.add(AuditEvent(action, RequestContext(request_id=f"r{i:02d}")))
            seen["after_add"] = buffer.figures()
            seen["written_while_down"] = await buffer.flush()
            seen["written_while_down"] += await buffer.flush()
            for i in range(12, 14):
                buffer.add(AuditEvent(action, RequestContext(request_id=f"r{i:02d}")))
            seen["while_down"] = buffer.figures()
            seen["lines_while_down"] = audit_lines(caplog)
            target["store"] = fast  # the database is back
            seen["written_after"] = await buffer.flush()
            seen["after"] = buffer.figures()
        finally:
            await fast.close()
            await live.dispose()
            await dead.dispose()
        return seen

    seen = asyncio.run(scenario())
    assert seen["after_add"] == {"buffered_rows": 5, "dropped_rows": 7, "malformed_rows": 0}
    assert seen["written_while_down"] == 0
    assert seen["while_down"] == {"buffered_rows": 5, "dropped_rows": 9, "malformed_rows": 0}
    down = seen["lines_while_down"]
    assert sum("audit buffer full" in line for line in down) == 1, down
    assert sum("database unavailable" in line for line in down) == 1, down
    assert seen["written_after"] == 5
    assert seen["after"] == {"buffered_rows": 0, "dropped_rows": 9, "malformed_rows": 0}
    stored = db.rows(
        "SELECT request_id FROM oauth2_token_logs WHERE action = :a ORDER BY id", a=action
    )
    assert [row.request_id for row in stored] == [f"r{i:02d}" for i in range(9, 14)]
    messages = audit_lines(caplog)
    assert sum("9 oldest rows were dropped" in m for m in messages) == 1, messages
    assert sum("works again" in m for m in messages) == 1, messages


def test_buffer_bound_and_drop_count_show_in_readyz_and_metrics(start_server, db, unique):
    """A live server with OAUTH2_AUDIT_BUFFER_MAX_ROWS=3 and no flush before shutdown:
    five introspections keep the newest three rows, and /readyz and /metrics say 2
    dropped and 3 buffered; shutdown writes the three kept."""
    live = start_server(
        OAUTH2_AUDIT_BUFFER_MAX_ROWS="3",
        OAUTH2_AUDIT_FLUSH_INTERVAL="3600",
        OAUTH2_AUDIT_BATCH_SIZE="1000",
    )
    client_id, secret = db.create_client(name=unique("rs"))
    token = live.client_credentials_token(client_id, secret)
    request_ids = [unique("req") for _ in range(5)]
    for request_id in request_ids:
        answer = introspect(live, client_id, secret, token, headers={"X-Request-ID": request_id})
        assert answer.status_code == 200

    ready = live.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["audit"] == {"buffered_rows": 3, "dropped_rows": 2, "malformed_rows": 0}
    metrics = live.get("/metrics").text.splitlines()
    assert "oauth2_audit_buffer_rows 3.0" in metrics
    assert "oauth2_audit_rows_dropped_total 2.0" in metrics
    assert "oauth2_audit_rows_malformed_total 0.0" in metrics

    live.stop()  # a graceful shutdown flushes what the buffer kept
    kept = audit_rows(db, client_id, "introspected", "request_id")
    assert [row.request_id for row in kept] == request_ids[2:]
    assert sum("audit buffer full" in line for line in live.log().splitlines()) == 1
