"""Client changes take effect everywhere, at once (DESIGN.md invariant 9; issue #9 item 1).

Once the admin API or the CLI has returned from deactivating, deleting, rotating a secret
or narrowing scopes, grant types or redirect URIs, no worker of any instance acts on the
old client: not for client_credentials (RFC 6749 §4.4), the authorization endpoint
(§4.1.1, §3.1.2), refresh (§6), token exchange (RFC 8693), introspection (RFC 7662) or
revocation (RFC 7009). Introspection answers `active: false` for every token of a
deactivated or deleted client, including tokens written in a race with the change.

On PostgreSQL the deployment is two instances with two workers each (`module_instances`);
on SQLite one instance with two workers (no NOTIFY there: the version check alone). Every
worker's client cache is warmed first, so a worker that kept acting on its cached copy
would be seen. Servers here allow many failed client authentications, as most attempts
are meant to fail.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest
import requests

from oauth2_server.storage import clients as client_registry
from oauth2_server.storage.clients import set_client_active
from tests.admin_helpers import admin_api, cli_json
from tests.conftest import LiveServer
from tests.fake_google import connect_branch, exchange, exchange_client
from tests.flows import REDIRECT_URI, authorize_with_pkce, exchange_code, oauth_session

PASSWORD = "correct horse battery"
ATTEMPTS = 200
WARM_UP = 16  # requests per instance, so both of its workers cache the client
STALE = "was behind the database"  # ClientCache.stale's DEBUG line
ENV = {"OAUTH2_CLIENT_AUTH_FAILURE_LIMIT": "1000000"}
# The same for this module's `upstream` server (conftest): on PostgreSQL, failures count per
# IP across every server on the test database, so a flood test that ran on this database
# less than a window ago can push 127.0.0.1 over the default test limit (1000), and a
# refusal under test would be 429 `too many failed client authentications` instead of 401.
UPSTREAM_ENV = ENV


def wait_for_workers(server: LiveServer, workers: int = 2) -> None:
    """Wait until every worker of `server` has started (its log says so once per worker),
    so the warm-up reaches all of them."""
    deadline = time.monotonic() + 60
    while server.log().count("Application startup complete") < workers:
        assert time.monotonic() < deadline, server.log()[-2000:]
        time.sleep(0.1)


@pytest.fixture
def deployment(request: pytest.FixtureRequest, db: Any) -> Any:
    """`deployment()` → the instances of one deployment, each with 2 workers (all started):
    two on PostgreSQL, one on SQLite. One deployment serves the whole module: every test
    changes only clients it registered itself, and counts only its own client's lines."""

    def start(**env: str) -> list[LiveServer]:
        env = {**ENV, **env}
        if db.backend == "postgresql":
            servers = list(request.getfixturevalue("module_instances")(**env))
        else:
            servers = [request.getfixturevalue("module_server")(OAUTH2_WORKERS="2", **env)]
        for server in servers:
            wait_for_workers(server)
        return servers

    return start


def token_response(server: LiveServer, client_id: str, secret: str, **data: str) -> Any:
    return server.post(
        "/oauth2/token",
        auth=(client_id, secret),
        data={"grant_type": "client_credentials", **data},
    )


def warm(servers: list[LiveServer], client_id: str, secret: str, **data: str) -> list[str]:
    """WARM_UP successful token requests per instance; the tokens issued."""
    tokens = []
    for server in servers:
        for _ in range(WARM_UP):
            response = token_response(server, client_id, secret, **data)
            assert response.status_code == 200, response.text
            tokens.append(response.json()["access_token"])
    return tokens


def alternate(servers: list[LiveServer], count: int = ATTEMPTS) -> Any:
    """`count` servers, alternating between the instances."""
    return itertools.islice(itertools.cycle(servers), count)


def introspect(server: LiveServer, client_id: str, secret: str, token: str) -> Any:
    return server.post("/oauth2/introspect", auth=(client_id, secret), data={"token": token})


def active_at(server: LiveServer, introspector: tuple[str, str], token: str) -> bool:
    response = introspect(server, *introspector, token)
    assert response.status_code == 200, response.text
    return response.json()["active"]


def stale_reads(servers: list[LiveServer], client_id: str) -> int:
    """How often a worker found its cached record of `client_id` behind the database at
    use (ClientCache.stale's line names the client)."""
    return sum(
        STALE in line and f"client {client_id}:" in line
        for server in servers
        for line in server.log().splitlines()
    )


# -- deactivation and deletion ---------------------------------------------------------


@pytest.mark.parametrize(
    "how", ["admin-patch", "cli-update", "admin-delete", "cli-delete"], ids=str
)
def test_deactivated_or_deleted_client_gets_nothing_from_any_worker(deployment, db, unique, how):
    """Starting the instant the call returns, 0 of 200 token requests alternating between
    the instances succeed, and every token issued before is inactive at both instances.
    Each worker finds its cached copy behind at most once (the change is pushed to it)."""
    servers = deployment()
    client_id, secret = db.create_client(name=unique("svc"), scope="read")
    introspector = db.create_client(name=unique("rs"), scope="introspect")
    api = admin_api(servers[0], db, unique) if how.startswith("admin") else None
    issued = warm(servers, client_id, secret)
    for server in servers:  # warm the introspector's cache too
        for token in issued[:WARM_UP]:
            assert active_at(server, introspector, token)

    if how == "admin-patch":
        response = api.patch(f"/clients/{client_id}", {"active": False})
    elif how == "admin-delete":
        response = api.delete(f"/clients/{client_id}")
    if api is not None:
        assert response.status_code == 200, response.text
    elif how == "cli-update":
        assert cli_json(db, "clients", "update", client_id, "--inactive")["active"] is False
    else:
        assert cli_json(db, "clients", "delete", client_id)["deleted"] is True

    answers = [token_response(s, client_id, secret).status_code for s in alternate(servers)]
    assert answers.count(200) == 0, answers
    assert set(answers) <= {400, 401}, answers
    for server in servers:
        assert not any(active_at(server, introspector, token) for token in issued)
    workers = 2 * len(servers)
    assert stale_reads(servers, client_id) <= workers, "cached records were not dropped on change"


@pytest.mark.parametrize("how", ["deactivate", "delete"])
def test_tokens_of_an_inactive_or_deleted_client_are_inactive_at_introspection(
    deployment, db, unique, how
):
    """RFC 7662 §2.2: introspection reads the token's client with the token row, so a token
    that no revocation reached (here: the client changed without revoking, as happens to
    a token written in a race with the change) is `active: false` at every instance."""
    servers = deployment()
    client_id, secret = db.create_client(name=unique("svc"), scope="read")
    introspector = db.create_client(name=unique("rs"), scope="introspect")
    tokens = warm(servers, client_id, secret)
    assert all(active_at(s, introspector, tokens[0]) for s in servers)
    with db.session() as session:
        if how == "deactivate":
            assert set_client_active(session, client_id, False)
        else:
            assert client_registry.delete_client(session, client_id)
    revoked = db.count(
        "oauth2_access_tokens", "client_id = :c AND revoked_at IS NOT NULL", c=client_id
    )
    assert revoked == 0  # nothing revoked them: only the client's state says inactive
    for server in servers:
        assert not any(active_at(server, introspector, token) for token in tokens)


def test_tokens_issued_while_a_client_is_deactivated_are_inactive(deployment, db, unique):
    """Requests racing the admin call may still be answered from the old state (they
    started before it returned), but every token they got is inactive afterwards, at
    every instance, and nothing is issued once the call has returned."""
    servers = deployment()
    client_id, secret = db.create_client(name=unique("svc"), scope="read")
    introspector = db.create_client(name=unique("rs"), scope="introspect")
    api = admin_api(servers[0], db, unique)
    warm(servers, client_id, secret)
    returned = threading.Event()
    issued: list[str] = []
    after: list[int] = []

    def hammer(server: LiveServer) -> None:
        for _ in range(400):
            done = returned.is_set()
            response = token_response(server, client_id, secret)
            if response.status_code == 200:
                issued.append(response.json()["access_token"])
            if done:
                after.append(response.status_code)
                if len(after) >= 40:
                    return

    threads = [threading.Thread(target=hammer, args=(s,)) for s in servers * 2]
    for thread in threads:
        thread.start()
    response = api.patch(f"/clients/{client_id}", {"active": False})
    returned.set()
    for thread in threads:
        thread.join(timeout=120)
    assert response.status_code == 200, response.text
    assert after and 200 not in after, after
    for server in servers:
        assert not any(active_at(server, introspector, token) for token in issued)


# -- secrets, scopes, grant types, redirect URIs ---------------------------------------


@pytest.mark.parametrize("how", ["admin", "cli"])
def test_rotated_secret_is_refused_by_every_worker_at_once(deployment, db, unique, how):
    """After a rotation returns, the old secret gets `invalid_client` (RFC 6749 §5.2) at
    every instance, and the new one works at every instance."""
    servers = deployment()
    client_id, old = db.create_client(name=unique("svc"), scope="read")
    warm(servers, client_id, old)
    if how == "admin":
        response = admin_api(servers[0], db, unique).post(f"/clients/{client_id}/secret")
        assert response.status_code == 200, response.text
        new = response.json()["client_secret"]
    else:
        new = cli_json(db, "clients", "rotate-secret", client_id)["client_secret"]

    answers = [token_response(s, client_id, old) for s in alternate(servers, 60)]
    assert [r.status_code for r in answers] == [401] * 60, [r.text for r in answers[:3]]
    assert all(r.json()["error"] == "invalid_client" for r in answers)
    for server in alternate(servers, 8):
        assert token_response(server, client_id, new).status_code == 200


@pytest.mark.parametrize("how", ["admin", "cli"])
def test_removed_scope_is_refused_by_every_worker_at_once(deployment, db, unique, how):
    """RFC 6749 §3.3: a scope removed from the registration is `invalid_scope` at every
    instance at once, and a request without `scope` gets only what remains."""
    servers = deployment()
    client_id, secret = db.create_client(name=unique("svc"), scope="read write")
    warm(servers, client_id, secret, scope="write")
    if how == "admin":
        response = admin_api(servers[0], db, unique).patch(
            f"/clients/{client_id}", {"scope": "read"}
        )
        assert response.status_code == 200, response.text
    else:
        assert cli_json(db, "clients", "update", client_id, "--scope", "read")["scope"] == "read"

    answers = [token_response(s, client_id, secret, scope="write") for s in alternate(servers, 60)]
    assert [r.status_code for r in answers] == [400] * 60, [r.text for r in answers[:3]]
    assert all(r.json()["error"] == "invalid_scope" for r in answers)
    for server in alternate(servers, 8):
        response = token_response(server, client_id, secret)
        assert response.status_code == 200 and response.json()["scope"] == "read"


def test_removed_introspect_scope_stops_introspection_at_once(deployment, db, unique):
    """RFC 7662 §2.1: a resource server whose `introspect` scope was removed learns
    nothing more about other clients' tokens, at any instance (its cached record is
    checked in the same read as the token row)."""
    servers = deployment()
    client_id, secret = db.create_client(name=unique("svc"), scope="read")
    rs_id, rs_secret = db.create_client(name=unique("rs"), scope="introspect")
    token = warm(servers, client_id, secret)[0]
    for server in servers:
        for _ in range(WARM_UP):
            assert active_at(server, (rs_id, rs_secret), token)
    response = admin_api(servers[0], db, unique).patch(f"/clients/{rs_id}", {"scope": "read"})
    assert response.status_code == 200, response.text
    for server in alternate(servers, 60):
        assert not active_at(server, (rs_id, rs_secret), token)


def test_removed_grant_type_is_refused_by_every_worker_at_once(deployment, db, unique):
    """RFC 6749 §5.2 `unauthorized_client` at every instance once client_credentials is
    no longer among the client's grant types."""
    servers = deployment()
    client_id, secret = db.create_client(
        name=unique("svc"),
        grant_types=["client_credentials", "authorization_code"],
        redirect_uris=["https://app.example.com/cb"],
        scope="read",
    )
    warm(servers, client_id, secret)
    response = admin_api(servers[0], db, unique).patch(
        f"/clients/{client_id}", {"grant_types": ["authorization_code"]}
    )
    assert response.status_code == 200, response.text
    answers = [token_response(s, client_id, secret) for s in alternate(servers, 60)]
    assert [r.status_code for r in answers] == [400] * 60, [r.text for r in answers[:3]]
    assert all(r.json()["error"] == "unauthorized_client" for r in answers)


def authorize_page(server: LiveServer, client_id: str, redirect_uri: str) -> requests.Response:
    url, _ = oauth_session(client_id, "read", redirect_uri).authorization_url(
        server.url("/oauth2/authorize")
    )
    return requests.get(url, allow_redirects=False, timeout=30)


@pytest.mark.parametrize("how", ["admin", "cli"])
def test_removed_redirect_uri_is_refused_by_every_worker_at_once(deployment, db, unique, how):
    """RFC 6749 §3.1.2.4, RFC 9700 §4.1.3: once a redirect URI is removed, an
    authorization request naming it gets an error page and no redirect at every instance."""
    servers = deployment()
    other = "https://app.example.com/cb"
    client_id, _ = db.create_client(
        name=unique("app"),
        public=True,
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI, other],
        scope="read",
    )
    for server in servers:
        for _ in range(WARM_UP // 2):
            page = authorize_page(server, client_id, other)
            assert page.status_code == 200 and 'name="username"' in page.text
    if how == "admin":
        response = admin_api(servers[0], db, unique).patch(
            f"/clients/{client_id}", {"redirect_uris": [REDIRECT_URI]}
        )
        assert response.status_code == 200, response.text
    else:
        cli_json(db, "clients", "update", client_id, "--redirect-uri", REDIRECT_URI)
    for server in alternate(servers, 40):
        page = authorize_page(server, client_id, other)
        assert page.status_code == 400 and "location" not in page.headers, page.text[:300]
    for server in servers:  # the remaining URI still works
        assert authorize_page(server, client_id, REDIRECT_URI).status_code == 200


# -- the other grant paths, introspection and revocation -------------------------------


def test_deactivated_client_cannot_refresh_introspect_or_revoke(deployment, db, unique):
    """RFC 6749 §6, RFC 7662 §2.1, RFC 7009 §2.1: each authenticates the client against
    its current row, at every instance."""
    servers = deployment()
    client_id, secret = db.create_client(
        name=unique("web"),
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI],
        scope="read",
    )
    user = db.create_user(unique("alice"), PASSWORD)
    result = authorize_with_pkce(servers[0].base_url, client_id, user.username, PASSWORD)
    tokens = exchange_code(servers[0].base_url, result, client_secret=secret)
    refresh = tokens["refresh_token"]
    for server in servers:  # warm: refresh, introspect its own token (both cache it)
        for _ in range(WARM_UP // 2):
            response = server.post(
                "/oauth2/token",
                auth=(client_id, secret),
                data={"grant_type": "refresh_token", "refresh_token": refresh},
            )
            assert response.status_code == 200, response.text
            refresh = response.json()["refresh_token"]
            access = response.json()["access_token"]
            assert active_at(server, (client_id, secret), access)
    response = admin_api(servers[0], db, unique).patch(f"/clients/{client_id}", {"active": False})
    assert response.status_code == 200, response.text

    for server in alternate(servers, 20):
        refreshed = server.post(
            "/oauth2/token",
            auth=(client_id, secret),
            data={"grant_type": "refresh_token", "refresh_token": refresh},
        )
        assert refreshed.status_code == 401 and refreshed.json()["error"] == "invalid_client"
        looked = introspect(server, client_id, secret, access)
        assert looked.status_code == 401 and looked.json()["error"] == "invalid_client"
        revoked = server.post("/oauth2/revoke", auth=(client_id, secret), data={"token": refresh})
        assert revoked.status_code == 401 and revoked.json()["error"] == "invalid_client"


def test_token_exchange_refused_once_the_client_is_deactivated(upstream, db, google, unique):
    """RFC 8693 §2.2.2: the exchange authenticates the caller against its current row; a
    change made by another process (here: the test's own connection) applies at once."""
    branch_id = unique("branch")
    connect_branch(upstream, db, google, branch_id)
    client_id, secret = exchange_client(db, [branch_id])
    subject = upstream.client_credentials_token(client_id, secret, scope="upstream:google read")
    for _ in range(4):
        assert exchange(upstream, client_id, secret, subject, branch_id).status_code == 200
    audited = db.count("oauth2_token_logs", "action = 'exchanged' AND client_id = :c", c=client_id)
    with db.session() as session:
        assert set_client_active(session, client_id, False)
    for _ in range(10):
        response = exchange(upstream, client_id, secret, subject, branch_id)
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "invalid_client"
        assert "access_token" not in response.json()
    after = db.count("oauth2_token_logs", "action = 'exchanged' AND client_id = :c", c=client_id)
    assert after == audited
