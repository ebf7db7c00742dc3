"""Logs an operator can ship (issue #12 item 1; README "Logging").

One logging setup for the app, uvicorn and libraries: `OAUTH2_LOG_FORMAT=json` makes
every line of the server's output one JSON object with an ISO-8601 UTC `timestamp`,
`level` and `logger`; `text` has the same timestamp. Each request gets exactly one
access line (logger `oauth2_server.access`) with request id, method, route template,
status, latency in ms, the authenticated client's id and the client IP; never the raw
path with ids nor a query string.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from tests.admin_helpers import admin_api

ACCESS = "oauth2_server.access"
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: "
)


def wait_for(server: Any, needles: list[str]) -> str:
    """The server's log once every needle is in it (polled; the line is written after
    the response is sent)."""
    deadline = time.monotonic() + 30
    while True:
        log = server.log()
        if all(n in log for n in needles):
            return log
        assert time.monotonic() < deadline, f"missing {needles} in:\n{log[-3000:]}"
        time.sleep(0.1)


def test_json_log_lines_parse_and_each_request_has_one_access_line(start_server, db, unique):
    server = start_server(OAUTH2_LOG_FORMAT="json")
    admin = admin_api(server, db, unique)
    client_id, secret = db.create_client(name=unique("svc"), scope="read")
    assert secret is not None
    ids = {kind: f"{kind}-{uuid.uuid4().hex}" for kind in ("health", "token", "admin", "404")}
    started = datetime.now(UTC) - timedelta(seconds=5)

    def header(kind: str) -> dict[str, str]:
        return {"X-Request-ID": ids[kind]}

    secret_query = "code=" + uuid.uuid4().hex  # a query string must never reach the log
    assert server.get(f"/healthz?{secret_query}", headers=header("health")).status_code == 200
    response = server.post(
        "/oauth2/token",
        auth=(client_id, secret),
        data={"grant_type": "client_credentials"},
        headers=header("token"),
    )
    assert response.status_code == 200
    assert admin.get(f"/clients/{client_id}", headers=header("admin")).status_code == 200
    assert server.get(f"/nothing/{client_id}", headers=header("404")).status_code == 404
    log = wait_for(server, list(ids.values()))

    records = []
    for line in log.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)  # every line, the server's and uvicorn's alike
        assert {"timestamp", "level", "logger", "message"} <= record.keys(), record
        moment = datetime.fromisoformat(record["timestamp"])
        assert moment.utcoffset() == timedelta(0), record["timestamp"]
        assert started <= moment <= datetime.now(UTC) + timedelta(seconds=5), record
        records.append(record)
    assert {r["logger"] for r in records} >= {ACCESS, "uvicorn.error"}

    expected = {
        "health": ("GET", "/healthz", 200, None),
        "token": ("POST", "/oauth2/token", 200, client_id),
        "admin": ("GET", "/admin/clients/{client_id}", 200, admin.client_id),
        "404": ("GET", "unmatched", 404, None),
    }
    for kind, (method, route, status, who) in expected.items():
        lines = [r for r in records if r["logger"] == ACCESS and r["request_id"] == ids[kind]]
        assert len(lines) == 1, (kind, lines)
        line = lines[0]
        assert line["level"] == "INFO"
        assert (line["method"], line["route"], line["status"]) == (method, route, status)
        assert line["client_id"] == who, (kind, line)
        assert line["client_ip"] == "127.0.0.1"
        assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0
    assert secret_query not in log
    assert f"/nothing/{client_id}" not in log  # raw paths are not logged, templates are
    assert f"/clients/{client_id}" not in log


def test_text_log_lines_carry_an_iso_utc_timestamp(server):
    request_id = f"text-{uuid.uuid4().hex}"
    response = requests.get(
        server.url("/healthz"), headers={"X-Request-ID": request_id}, timeout=30
    )
    assert response.status_code == 200
    log = wait_for(server, [request_id])
    access = [line for line in log.splitlines() if request_id in line]
    assert len(access) == 1, access
    assert TEXT_LINE.match(access[0]), access[0]
    assert f" INFO {ACCESS}: GET /healthz 200 " in access[0]
    assert "client_ip=127.0.0.1" in access[0]
    started = [line for line in log.splitlines() if "Application startup complete" in line]
    assert started and all(TEXT_LINE.match(line) for line in started), started


def test_access_line_is_off_with_oauth2_access_log_false(start_server):
    server = start_server(OAUTH2_ACCESS_LOG="false", OAUTH2_LOG_FORMAT="json")
    request_id = f"off-{uuid.uuid4().hex}"
    assert server.get("/healthz", headers={"X-Request-ID": request_id}).status_code == 200
    # a line would be written as the response goes out; give it a generous second
    time.sleep(1)
    assert request_id not in server.log()
    assert ACCESS not in server.log()
