"""Counts without SQL (issue #11 item 4): GET /admin/audit/summary and `oauth2-server audit
summary` group the rows matching the query's filters. Every answer equals a direct SQL
GROUP BY; bad `group_by` values are a 400 naming it (CLI: exit 2)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.admin_helpers import admin_api, assert_error, event, insert_log_rows, run_cli

BASE = datetime(2035, 4, 5, tzinfo=UTC)  # planted in the future: no seal reaches them


@pytest.fixture
def admin(server, db, unique):
    return admin_api(server, db, unique)


@pytest.fixture
def planted(db, unique):
    """Nine rows of one client: 4 issued from .1, 2 issued from .2, 3 introspected from .1."""
    client = unique("summary")
    plan = [("issued", "198.51.100.1")] * 4 + [("issued", "198.51.100.2")] * 2
    plan += [("introspected", "198.51.100.1")] * 3
    insert_log_rows(
        db,
        [
            event(action, BASE + timedelta(seconds=n), client_id=client, ip=ip)
            for n, (action, ip) in enumerate(plan)
        ],
    )
    return client


def _sql_groups(db, client: str) -> list[dict]:
    with db.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT action, ip, count(*) AS n FROM oauth2_token_logs WHERE client_id = :c"
                " GROUP BY action, ip ORDER BY n DESC, action, ip"
            ),
            {"c": client},
        ).all()
    return [{"action": a, "ip": ip, "count": n} for a, ip, n in rows]


def test_summary_equals_a_direct_sql_group_by(admin, db, planted) -> None:
    answer = admin.get("/audit/summary", params={"client_id": planted, "group_by": "action,ip"})
    assert answer.status_code == 200, answer.text
    summary = answer.json()
    assert summary["groups"] == _sql_groups(db, planted)
    assert summary["groups"][0] == {"action": "issued", "ip": "198.51.100.1", "count": 4}
    assert summary["total"] == 9 and summary["truncated"] is False
    by_action = admin.get(
        "/audit/summary", params={"client_id": planted, "group_by": "action", "action": "issued"}
    ).json()
    assert by_action["groups"] == [{"action": "issued", "count": 6}] and by_action["total"] == 6


def test_a_summary_is_itself_an_audit_read(admin, planted) -> None:
    assert admin.get("/audit/summary", params={"client_id": planted, "group_by": "ip"}).ok
    page = admin.get("/audit", params={"action": "audit_read", "client_id": admin.client_id})
    (row,) = [i for i in page.json()["items"] if i["details"].get("group_by") == ["ip"]]
    assert row["details"]["filters"] == {"client_id": planted}
    assert row["details"]["rows"] == 2  # two groups


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({}, id="no-group-by"),
        pytest.param({"group_by": "details"}, id="not-a-group-column"),
        pytest.param({"group_by": "action,ip,subject,branch_id"}, id="more-than-three"),
    ],
)
def test_bad_group_by_is_a_400_naming_it(admin, params) -> None:
    assert_error(admin.get("/audit/summary", params=params), 400, "group_by")


def test_the_cli_summary_matches_the_api(admin, db, planted) -> None:
    result = run_cli(
        db, "audit", "summary", "--client-id", planted, "--group-by", "action", "--group-by", "ip"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["groups"] == _sql_groups(db, planted)
    refused = run_cli(db, "audit", "summary", "--group-by", "user_agent")
    assert refused.returncode == 2 and "group-by" in refused.stderr
