"""Audit queries: GET /admin/audit and `oauth2-server audit query|export` return exactly
the rows matching every filter, page by signed keyset cursors, and refuse bad filters
with a 400 naming the parameter.

Rows are planted directly with future timestamps, so no sealing in other tests ever
reaches them, and with per-test client ids, so other tests' rows never match.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import TypeAdapter

from oauth2_server.admin import answers
from tests.admin_helpers import (
    _sealed,
    _with_sessions,
    admin_api,
    assert_error,
    event,
    insert_log_rows,
    run_cli,
)

BASE = datetime(2031, 3, 10, tzinfo=UTC)


@pytest.fixture
def admin(server, db, unique):
    return admin_api(server, db, unique)


@pytest.fixture
def planted(db, unique):
    """Six rows: five of client A across two days, one of client B."""
    a, b = unique("client-a"), unique("client-b")
    s1, s2, branch = unique("sub"), unique("sub"), unique("branch")
    ip1, ip2 = (f"198.18.{random.randrange(256)}.{n}" for n in (1, 2))
    hour = timedelta(hours=1)
    ids = insert_log_rows(
        db,
        [
            event("issued", BASE, client_id=a, subject=s1, ip=ip1, token_id="j0"),
            event(
                "refreshed",
                BASE + hour,
                client_id=a,
                subject=s1,
                ip=ip2,
                risk_score=0.4,
                flags=["new_ip"],
                details={"family_id": "f1"},
            ),
            event("revoked", BASE + 2 * hour, client_id=a, subject=s2, branch_id=branch),
            event("code_replay", BASE + 25 * hour, client_id=a, flags=["code_replay"]),
            event("admin_client_updated", BASE + 3 * hour, client_id=a),
            event("issued", BASE + hour, client_id=b, subject=s1),
        ],
    )
    return {
        "ids": ids,
        "a": a,
        "b": b,
        "s1": s1,
        "s2": s2,
        "branch": branch,
        "ip1": ip1,
        "ip2": ip2,
    }


def ids_of(admin, **params):
    """Every row id of a query, following next_cursor page by page."""
    found, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = admin.get("/audit", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        found += [item["id"] for item in page["items"]]
        if not (cursor := page["next_cursor"]):
            return found


def test_each_filter_returns_exactly_the_matching_rows(admin, planted):
    r = planted["ids"]
    a, day = planted["a"], {"since": "2031-03-10", "until": "2031-03-11T00:00:00Z"}
    assert ids_of(admin, client_id=a) == [r[0], r[1], r[2], r[4], r[3]]
    assert ids_of(admin, client_id=a, **day) == [r[0], r[1], r[2], r[4]]
    assert ids_of(admin, client_id=a, order="desc") == [r[3], r[4], r[2], r[1], r[0]]
    assert ids_of(admin, client_id=a, action=["issued", "revoked"]) == [r[0], r[2]]
    assert ids_of(admin, client_id=a, action="admin_*") == [r[4]]
    assert ids_of(admin, subject=planted["s1"]) == [r[0], r[1], r[5]]
    assert ids_of(admin, branch_id=planted["branch"]) == [r[2]]
    assert ids_of(admin, ip=planted["ip2"]) == [r[1]]
    assert ids_of(admin, client_id=a, min_risk="0.5") == [r[3]]
    assert ids_of(admin, client_id=a, min_risk="0.4") == [r[1], r[3]]
    assert ids_of(admin, client_id=a, flag="new_ip") == [r[1]]
    assert ids_of(admin, flag="code_replay", client_id=a, since="2031-03-11") == [r[3]]
    assert ids_of(admin, client_id=planted["b"], since="2031-03-10T00:30:00+00:00") == [r[5]]


def test_pages_follow_the_cursor_without_gaps_or_repeats(admin, planted):
    r, a = planted["ids"], planted["a"]
    pages = []
    response = admin.get("/audit", params={"client_id": a, "limit": 2}).json()
    while True:
        pages.append([item["id"] for item in response["items"]])
        if not response["next_cursor"]:
            break
        response = admin.get(
            "/audit", params={"client_id": a, "limit": 2, "cursor": response["next_cursor"]}
        ).json()
    assert pages == [[r[0], r[1]], [r[2], r[4]], [r[3]]]
    item = admin.get("/audit", params={"client_id": a, "limit": 1}).json()["items"][0]
    assert item["created_at"] == "2031-03-10T00:00:00Z" and item["risk_score"] == 0.0
    assert "row_hash" not in item and "prev_hash" not in item


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "2031-03-11", "until": "2031-03-10"}, "until"),
        ({"since": "2031-03-10T05:00:00Z", "until": "2031-03-10T05:00:00Z"}, "until"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2031-13-01"}, "until"),
        ({"min_risk": "2"}, "min_risk"),
        ({"min_risk": "high"}, "min_risk"),
        ({"ip": "10.0.0.256"}, "ip"),
        ({"flag": "NEW IP"}, "flag"),
        ({"order": "sideways"}, "order"),
        ({"limit": "0"}, "limit"),
        ({"limit": "5000"}, "limit"),
        ({"client": "x"}, "client"),
        ({"client_id": ["a", "b"]}, "client_id"),
    ],
)
def test_bad_filters_are_400_naming_the_parameter_and_change_nothing(
    db, admin, planted, params, field
):
    before = db.count("oauth2_token_logs")
    assert_error(admin.get("/audit", params=params), 400, field)
    assert db.count("oauth2_token_logs") == before


def test_tampered_or_foreign_cursors_are_400_naming_cursor(db, admin, planted):
    a = planted["a"]
    cursor = admin.get("/audit", params={"client_id": a, "limit": 1}).json()["next_cursor"]
    payload, mac = cursor.split(".")
    flipped = payload[:5] + ("A" if payload[5] != "A" else "B") + payload[6:]
    before = db.count("oauth2_token_logs")
    for bad, params in [
        (f"{flipped}.{mac}", {"client_id": a}),
        (f"{payload}.{mac[:-1]}", {"client_id": a}),
        ("garbage", {"client_id": a}),
        (cursor, {"client_id": planted["b"]}),  # a valid cursor of another query
    ]:
        response = admin.get("/audit", params={**params, "cursor": bad, "limit": 1})
        assert "cursor" in assert_error(response, 400, "cursor")["error_description"]
    assert db.count("oauth2_token_logs") == before


def test_cli_query_matches_the_api(db, admin, planted):
    a = planted["a"]
    result = run_cli(
        db, "audit", "query", "--client-id", a, "--action", "issued", "--action", "revoked"
    )
    assert result.returncode == 0, result.stderr
    assert [item["id"] for item in json.loads(result.stdout)["items"]] == ids_of(
        admin, client_id=a, action=["issued", "revoked"]
    )
    reversed_range = run_cli(db, "audit", "query", "--since", "2031-03-11", "--until", "2031-03-10")
    assert reversed_range.returncode == 2 and "until" in reversed_range.stderr


def test_export_streams_every_matching_row_as_csv_and_jsonl(db, planted, tmp_path):
    a, r = planted["a"], planted["ids"]
    target = tmp_path / "audit.csv"
    result = run_cli(
        db,
        "audit",
        "export",
        "--format",
        "csv",
        "--client-id",
        a,
        "--output",
        str(target),
        "--batch-size",
        "2",
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [int(row["id"]) for row in rows] == [r[0], r[1], r[2], r[4], r[3]]
    assert rows[1]["flags"] == "new_ip" and json.loads(rows[1]["details"]) == {"family_id": "f1"}
    assert rows[1]["family_id"] == "f1" and rows[1]["risk_score"] == "0.4"
    jsonl = run_cli(
        db, "audit", "export", "--format", "jsonl", "--client-id", a, "--min-risk", "0.1"
    )
    assert jsonl.returncode == 0, jsonl.stderr
    lines = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [line["id"] for line in lines] == [r[1], r[3]]
    assert "\x1b" not in jsonl.stderr and "rows" not in jsonl.stderr  # no progress bar off a TTY


def test_csv_export_defuses_spreadsheet_formulas(db, unique, tmp_path):
    client = unique("csv")
    insert_log_rows(
        db,
        [
            event(
                "issued",
                BASE,
                client_id=client,
                details={"x": 1},
                subject='=HYPERLINK("http://evil")',
            )
        ],
    )
    target = tmp_path / "out.csv"
    assert (
        run_cli(
            db, "audit", "export", "--format", "csv", "--client-id", client, "--output", str(target)
        ).returncode
        == 0
    )
    row = next(csv.DictReader(io.StringIO(target.read_text())))
    assert row["subject"].startswith("'=")


AUDIT_PAGE = TypeAdapter(answers.AuditPage)


def seal_now(db) -> int:
    """Seal every row up to now (no delay, no margin), in-process."""
    return asyncio.run(_with_sessions(db, lambda sessions: _sealed(sessions, 0, margin=0)))


def _watermark_walk(admin, after: int, limit: int, **params) -> tuple[list[dict], int]:
    """Every row after `after` by watermark pages of `limit`; (rows, final next_after)."""
    rows: list[dict] = []
    while True:
        response = admin.get("/audit", params={**params, "after": str(after), "limit": limit})
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["after"] == after and page["next_cursor"] is None
        AUDIT_PAGE.validate_python(page)  # what /admin/openapi.json documents
        if not page["items"]:
            assert page["next_after"] == after
            return rows, after
        assert page["next_after"] == page["items"][-1]["seal_seq"]
        assert page["items"][0]["seal_seq"] > after  # progress: never the row at `after`
        rows += page["items"]
        after = page["next_after"]


def test_after_returns_every_sealed_row_once_in_seal_seq_order(db, admin, unique):
    """Issue #11 item 7: the watermark `after` (a seal_seq) pages through the sealed rows
    exactly once, equal to a direct SQL read; rows not sealed yet come after the next
    seal, never before."""
    seal_now(db)
    start = int(db.scalar("SELECT coalesce(max(seal_seq), 0) FROM oauth2_token_logs"))
    client = unique("watermark")
    now = datetime.now(UTC)  # current rows only: sealing runs here
    planted = insert_log_rows(db, [event("issued", now, client_id=client) for _ in range(5)])
    assert _watermark_walk(admin, start, 2, client_id=client)[0] == []  # not sealed yet
    seal_now(db)
    rows, last = _watermark_walk(admin, start, 2)
    sequence = [row["seal_seq"] for row in rows]
    assert sequence == sorted(set(sequence))  # increasing: no repeats
    expected = db.rows(
        "SELECT id FROM oauth2_token_logs WHERE seal_seq > :a AND seal_seq <= :b ORDER BY seal_seq",
        a=start,
        b=last,
    )
    assert [row["id"] for row in rows] == [row.id for row in expected]
    assert set(planted) <= {row["id"] for row in rows}
    mine, _ = _watermark_walk(admin, start, 3, client_id=client)  # filters still apply
    assert [row["id"] for row in mine] == planted
    # the reads above were rows too: sealed now, they follow `last`, and nothing else does
    seal_now(db)
    newer, _ = _watermark_walk(admin, last, 1000)
    reads = [row for row in newer if row["action"] == "audit_read"]
    assert {"filters": {"client_id": client}, "after": start} in [
        {"filters": row["details"]["filters"], "after": row["details"]["after"]} for row in reads
    ]


def test_cli_query_after_matches_the_api(db, admin, unique):
    seal_now(db)
    start = int(db.scalar("SELECT coalesce(max(seal_seq), 0) FROM oauth2_token_logs"))
    client = unique("watermark-cli")
    insert_log_rows(db, [event("issued", datetime.now(UTC), client_id=client) for _ in range(3)])
    seal_now(db)
    result = run_cli(db, "audit", "query", "--after", str(start), "--client-id", client)
    assert result.returncode == 0, result.stderr
    page = json.loads(result.stdout)
    api, _ = _watermark_walk(admin, start, 1000, client_id=client)
    assert [item["id"] for item in page["items"]] == [item["id"] for item in api]
    assert page["next_after"] == api[-1]["seal_seq"]
    refused = run_cli(db, "audit", "query", "--after", "-1")
    assert refused.returncode == 2 and "after" in refused.stderr


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"after": "-1"}, "after"),
        ({"after": "x"}, "after"),
        ({"after": "1.5"}, "after"),
        ({"after": "¹"}, "after"),
        ({"after": "9" * 20}, "after"),
        ({"after": ["1", "2"]}, "after"),
        ({"after": "1", "cursor": "abc"}, "cursor"),
        ({"after": "1", "order": "desc"}, "order"),
    ],
)
def test_bad_after_is_a_400_naming_the_parameter(db, admin, params, field):
    before = db.count("oauth2_token_logs")
    assert_error(admin.get("/audit", params=params), 400, field)
    assert db.count("oauth2_token_logs") == before
