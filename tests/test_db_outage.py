"""Outages degrade, never crash (issue #8 item 4; DESIGN.md invariant 11).

The server under test reaches PostgreSQL through a loopback TCP proxy (tests/tcp_proxy.py)
that the test cuts (connections closed, new ones refused) or stalls (nothing forwarded:
only timeouts end the wait) and then restores; the machine's PostgreSQL is never touched.
While the database is unreachable, token, introspection, revocation, the admin API and
/readyz answer 503 `temporarily_unavailable` JSON with `Retry-After`, within
`OAUTH2_DB_TIMEOUT` (2 s here; the requests' own 30 s timeout is the only bound asserted,
never a duration); the log says once that the outage started and once that it ended, with
no traceback; once the proxy forwards again, requests succeed without a restart.

PostgreSQL only: a SQLite file has no network to cut.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy.engine import make_url

from tests.conftest import Database, LiveServer, start_live_server
from tests.tcp_proxy import TcpProxy

DB_TIMEOUT = "2"
OUTAGE_STARTED = "answering 503 temporarily_unavailable"
OUTAGE_ENDED = "database available again"


@dataclasses.dataclass
class Proxied:
    server: LiveServer
    proxy: TcpProxy
    client: tuple[str, str]
    token: str

    def calls(self) -> dict[str, requests.Response]:
        """One request to each database-backed endpoint."""
        client_id, secret = self.client
        bearer = {"Authorization": f"Bearer {self.token}"}
        server = self.server
        return {
            "token": server.post(
                "/oauth2/token",
                data={"grant_type": "client_credentials", "scope": "admin"},
                auth=(client_id, secret),
            ),
            "introspect": server.post(
                "/oauth2/introspect", data={"token": self.token}, auth=(client_id, secret)
            ),
            "revoke": server.post(
                "/oauth2/revoke", data={"token": "not-a-token"}, auth=(client_id, secret)
            ),
            "admin": server.get("/admin/clients", headers=bearer),
            "readyz": server.get("/readyz"),
        }


@pytest.fixture
def proxied(db: Database, tmp_path: Path) -> Iterator[Proxied]:
    """A live server whose database URL points at a TcpProxy in front of PostgreSQL."""
    if db.backend != "postgresql":
        pytest.skip("a SQLite file has no network to cut (outages are a PostgreSQL matter)")
    url = make_url(db.url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    through_proxy = url.set(host="127.0.0.1", port=proxy.port)
    proxied_db = dataclasses.replace(db, url=through_proxy.render_as_string(hide_password=False))
    server = start_live_server(
        proxied_db, tmp_path, OAUTH2_DB_TIMEOUT=DB_TIMEOUT, OAUTH2_LOG_LEVEL="info"
    )
    try:
        client = db.create_client(scope="admin")
        assert client[1] is not None
        token = server.client_credentials_token(client[0], client[1], scope="admin")
        yield Proxied(server, proxy, (client[0], client[1]), token)
    finally:
        server.stop()
        proxy.stop()


def assert_unavailable(name: str, response: requests.Response) -> None:
    assert response.status_code == 503, (name, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), name
    assert int(response.headers["retry-after"]) >= 1, name
    body: dict[str, Any] = response.json()
    if name == "readyz":
        assert body["status"] == "unavailable", body
    else:
        assert body["error"] == "temporarily_unavailable", body
        assert body["error_description"]
        assert response.headers["cache-control"] == "no-store"


def wait_until_served(proxied: Proxied) -> dict[str, requests.Response]:
    """Poll (no restart) until every endpoint answers below 500 again."""
    deadline = time.monotonic() + 60
    while True:
        answers = proxied.calls()
        if all(r.status_code < 500 for r in answers.values()):
            return answers
        assert time.monotonic() < deadline, {k: r.status_code for k, r in answers.items()}
        time.sleep(0.2)


def assert_recovered(answers: dict[str, requests.Response]) -> None:
    assert answers["token"].status_code == 200, answers["token"].text
    assert answers["introspect"].json()["active"] is True
    assert answers["revoke"].status_code == 200
    assert answers["admin"].status_code == 200
    assert answers["readyz"].json()["status"] == "ok"


def outage_lines(log: str, phrase: str) -> list[str]:
    return [line for line in log.splitlines() if phrase in line]


def test_cut_database_answers_503_logs_once_and_recovers(proxied: Proxied) -> None:
    """Connections closed and refused: every endpoint 503 with Retry-After; one log line
    when it starts, one when it ends, no traceback; served again without a restart."""
    proxied.proxy.cut()
    for _ in range(3):
        for name, response in proxied.calls().items():
            assert_unavailable(name, response)
    # The authorization endpoint's users are browsers: the same 503 as its error page.
    page = proxied.server.get(
        "/oauth2/authorize",
        params={"response_type": "code", "client_id": "not-cached-anywhere"},
        allow_redirects=False,
    )
    assert page.status_code == 503, page.text[:300]
    assert page.headers["content-type"].startswith("text/html")
    assert "temporarily_unavailable" in page.text and int(page.headers["retry-after"]) >= 1

    proxied.proxy.restore()
    assert_recovered(wait_until_served(proxied))

    log = proxied.server.log()
    assert len(outage_lines(log, OUTAGE_STARTED)) == 1, log[-3000:]
    assert len(outage_lines(log, OUTAGE_ENDED)) == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_hung_database_answers_503_within_the_timeout(proxied: Proxied) -> None:
    """Nothing forwarded (a hung network or database): OAUTH2_DB_TIMEOUT ends each wait
    with a 503 well before the client's 30 s timeout; then served again."""
    proxied.proxy.stall()
    for name, response in proxied.calls().items():
        assert_unavailable(name, response)

    proxied.proxy.restore()
    assert_recovered(wait_until_served(proxied))

    log = proxied.server.log()
    assert len(outage_lines(log, OUTAGE_STARTED)) == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
