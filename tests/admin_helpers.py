"""Helpers for the admin API and audit-trail tests: an admin API client, introspection,
direct audit-row inserts, and the `oauth2-server` CLI against the test database."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests
from sqlalchemy import insert, text

from oauth2_server.audit import chain as audit_chain
from oauth2_server.audit import sealing
from oauth2_server.audit.log import AuditEvent, RequestContext
from oauth2_server.db.engine import create_engine, create_sessionmaker
from oauth2_server.db.models import TokenLog
from tests.conftest import ROOT, Database, LiveServer, free_port, run_oauth2_cli, server_env

PASSWORD = "correct horse battery"


@dataclass
class AdminAPI:
    """Calls /admin/... with a bearer token of an admin client."""

    server: LiveServer
    token: str
    client_id: str

    def request(
        self, method: str, path: str, token: str | None = None, **kwargs: Any
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {token or self.token}", **kwargs.pop("headers", {})}
        return requests.request(
            method, self.server.url("/admin" + path), headers=headers, timeout=30, **kwargs
        )

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, json=body, **kwargs)

    def patch(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", path, json=body, **kwargs)

    def put(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, json=body, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)


def admin_api(server: LiveServer, db: Database, unique: Any) -> AdminAPI:
    """A fresh admin client (scope `admin`) and its access token."""
    client_id, secret = db.create_client(name=unique("admin"), scope="admin")
    assert secret is not None
    return AdminAPI(server, server.client_credentials_token(client_id, secret), client_id)


class Introspector:
    """A resource server allowed to introspect any token (scope `introspect`)."""

    def __init__(self, server: LiveServer, db: Database, unique: Any) -> None:
        self.server = server
        self.client_id, self.secret = db.create_client(name=unique("rs"), scope="introspect")

    def active(self, token: str) -> bool:
        response = self.server.post(
            "/oauth2/introspect", auth=(self.client_id, self.secret), data={"token": token}
        )
        assert response.status_code == 200, response.text
        return response.json()["active"]


def assert_error(
    response: requests.Response, status: int, field: str | None = None
) -> dict[str, Any]:
    """The response is a JSON error with this status naming `field`."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] and body["error_description"], body
    if field is not None:
        assert body.get("field") == field, body
    return body


def snapshot(db: Database, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in db.rows(sql, **params)]


def admin_rows(db: Database) -> int:
    return db.count("oauth2_token_logs", "action LIKE 'admin%'")


def insert_log_rows(db: Database, events: Iterable[AuditEvent]) -> list[int]:
    """Insert audit rows directly; returns their ids in order."""
    rows = [event.row() for event in events]
    with db.session() as session:
        result = session.execute(
            insert(TokenLog).returning(TokenLog.id, sort_by_parameter_order=True), rows
        )
        return list(result.scalars())


def event(action: str, created_at: datetime, **kwargs: Any) -> AuditEvent:
    ip = kwargs.pop("ip", None)
    return AuditEvent(action, RequestContext(ip=ip), created_at=created_at, **kwargs)


def run_cli(
    db: Database, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m oauth2_server ARGS` against the test database."""
    environment = server_env(db.url, db.keys, free_port(), **(env or {}))
    return run_oauth2_cli(*args, env=environment, cwd=ROOT)


def cli_json(db: Database, *args: str, env: dict[str, str] | None = None) -> Any:
    result = run_cli(db, *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def _with_sessions(db: Database, call: Any) -> Any:
    engine = create_engine(db.url, 2)
    try:
        return await call(create_sessionmaker(engine))
    finally:
        await engine.dispose()


def seal(db: Database, delay: float = 0) -> int:
    """Seal pending audit rows now (in-process)."""
    return asyncio.run(_with_sessions(db, lambda s: _sealed(s, delay)))


async def _sealed(sessions: Any, delay: float, margin: float = sealing.DEFAULT_MARGIN) -> int:
    """Rows sealed by one unsigned run of `audit.sealing.seal_pending`."""
    return (await sealing.seal_pending(sessions, delay, margin=margin)).sealed


def verify(db: Database, expect: tuple[int, str] | None = None) -> audit_chain.VerifyReport:
    """Verify the hash chain (in-process)."""
    return asyncio.run(_with_sessions(db, lambda s: audit_chain.verify_chain(s, expect)))


def execute(db: Database, sql: str, **params: Any) -> int:
    """Run one statement directly (as a tamperer would); returns the row count."""
    with db.engine.begin() as connection:
        return connection.execute(text(sql), params).rowcount
