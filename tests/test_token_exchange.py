"""RFC 8693 token exchange for a branch's Google access token (DESIGN.md "Upstream
brokering" 3), through a live server and a fake Google.

Every refused request is RFC 8693 §2.2.2 / RFC 6749 §5.2 shaped and leaves the stored
upstream grants exactly as they were (DESIGN.md invariant 8). The refusals use a branch
whose Google token is near expiry, so a request that got past validation by mistake
would show up as an upstream refresh.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from oauth2_server.storage.branches import set_branch_active
from tests.fake_google import (
    ACCESS_TOKEN_TYPE,
    BUSINESS_MANAGE,
    TOKEN_EXCHANGE,
    connect_branch,
    credential_rows,
    ensure_branch,
    exchange,
    exchange_client,
)


@pytest.fixture
def stale_branch(upstream, db, google, unique):
    """A branch connected to Google whose stored token has 2 minutes left (< 5 min)."""
    branch_id = unique("stale")
    connect_branch(upstream, db, google, branch_id, expires_in=120)
    return branch_id


@contextmanager
def nothing_changes(db, google):
    """The block changes no stored upstream grant and makes no upstream refresh call."""
    before = credential_rows(db)
    yield
    assert credential_rows(db) == before and google.refresh_calls == 0


def assert_refused(response, error, status=400, *, mentions=""):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    assert body["error_description"]
    assert mentions in body["error_description"], body
    assert response.headers["cache-control"] == "no-store"
    assert "access_token" not in body


# -- the exchange ------------------------------------------------------------------------


def test_exchange_returns_the_branch_google_token_with_five_minutes_left(
    upstream, db, google, unique
):
    """RFC 8693 §2.2.1: access_token, issued_token_type, token_type, expires_in, scope."""
    branch_id = unique("branch")
    connect_branch(upstream, db, google, branch_id)
    google_token = google.issued_access_tokens[-1]
    client_id, secret = exchange_client(db, [branch_id])
    subject = upstream.client_credentials_token(client_id, secret, scope="upstream:google read")

    response = exchange(upstream, client_id, secret, subject, branch_id)

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["access_token"] == google_token
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["token_type"] == "Bearer"
    assert 300 <= body["expires_in"] <= 3599
    assert BUSINESS_MANAGE in body["scope"].split()
    assert "refresh_token" not in body
    assert google.refresh_calls == 0


def test_exchange_is_audited_without_the_token(upstream, db, google, unique):
    """DESIGN.md invariant 6: `exchanged` row with branch, provider and client."""
    branch_id = unique("audited")
    connect_branch(upstream, db, google, branch_id)
    client_id, secret = exchange_client(db, [branch_id])
    subject = upstream.client_credentials_token(client_id, secret)
    body = exchange(upstream, client_id, secret, subject, branch_id).json()

    rows = db.rows(
        "SELECT client_id, branch_id, grant_type, details FROM oauth2_token_logs "
        "WHERE action = 'exchanged' AND branch_id = :b",
        b=branch_id,
    )
    assert len(rows) == 1
    client, branch, grant_type, details = rows[0]
    assert (client, branch, grant_type) == (client_id, branch_id, TOKEN_EXCHANGE)
    assert "google" in str(details)
    assert body["access_token"] not in str(rows)
    assert body["access_token"] not in upstream.log()


def test_expires_in_comes_from_the_provider_never_assumed(upstream, db, google, unique):
    """DESIGN.md: compute expiry from `expires_in`, never assume 3600."""
    branch_id = unique("odd-ttl")
    connect_branch(upstream, db, google, branch_id, expires_in=1234)
    client_id, secret = exchange_client(db, [branch_id])
    subject = upstream.client_credentials_token(client_id, secret)
    body = exchange(upstream, client_id, secret, subject, branch_id).json()
    assert 1200 <= body["expires_in"] <= 1234


def test_a_client_granted_every_branch_may_exchange_for_any(upstream, db, google, unique):
    branch_id = unique("any")
    connect_branch(upstream, db, google, branch_id)
    client_id, secret = exchange_client(db, ["*"])
    subject = upstream.client_credentials_token(client_id, secret)
    assert exchange(upstream, client_id, secret, subject, branch_id).status_code == 200


def test_requested_scope_within_the_grant_is_accepted(upstream, db, google, unique):
    branch_id = unique("scoped")
    connect_branch(upstream, db, google, branch_id)
    client_id, secret = exchange_client(db, [branch_id])
    subject = upstream.client_credentials_token(client_id, secret)
    response = exchange(upstream, client_id, secret, subject, branch_id, scope=BUSINESS_MANAGE)
    assert response.status_code == 200, response.text


def test_introspecting_the_subject_token_keeps_working(upstream, db, google, unique):
    """RFC 7662: the exchange does not consume or change the subject token."""
    branch_id = unique("introspect")
    connect_branch(upstream, db, google, branch_id)
    client_id, secret = exchange_client(db, [branch_id])
    subject = upstream.client_credentials_token(client_id, secret)
    assert exchange(upstream, client_id, secret, subject, branch_id).status_code == 200
    answer = upstream.post("/oauth2/introspect", auth=(client_id, secret), data={"token": subject})
    assert answer.json()["active"] is True


def test_concurrent_exchanges_each_get_their_own_answer(upstream, db, google, unique):
    """Exchanges arriving together are read in one statement on PostgreSQL
    (storage/fastpath.py `Coalescer`): each still gets its own branch's token, or its own
    RFC 8693 §2.2.2 refusal, and its own `exchanged` row."""
    branches = [unique("north"), unique("south")]
    tokens = {}
    for branch_id in branches:
        connect_branch(upstream, db, google, branch_id)
        tokens[branch_id] = google.issued_access_tokens[-1]
    refused_branch = unique("closed")
    ensure_branch(db, refused_branch)
    clients = {branch_id: exchange_client(db, [branch_id]) for branch_id in branches}
    subjects = {
        branch_id: upstream.client_credentials_token(*clients[branch_id]) for branch_id in branches
    }
    # Each client asks for its own branch, for the other client's branch, and for an
    # existing branch nobody is granted; several times over.
    asked = [(owner, target) for owner in branches for target in (*branches, refused_branch)] * 4

    def call(pair: tuple[str, str]) -> tuple[str, str, Any]:
        owner, target = pair
        client_id, secret = clients[owner]
        return owner, target, exchange(upstream, client_id, secret, subjects[owner], target)

    with ThreadPoolExecutor(max_workers=len(asked)) as pool:
        answers = list(pool.map(call, asked))
    for owner, target, response in answers:
        if owner == target:
            assert response.status_code == 200, response.text
            assert response.json()["access_token"] == tokens[target]
        else:
            assert_refused(response, "invalid_target", mentions=target)
    for branch_id in branches:
        assert (
            db.count("oauth2_token_logs", "action = 'exchanged' AND branch_id = :b", b=branch_id)
            == 4
        )
    assert google.refresh_calls == 0


def test_metadata_lists_the_token_exchange_grant(upstream):
    """RFC 8414 §2 grant_types_supported."""
    metadata = upstream.get("/.well-known/oauth-authorization-server").json()
    assert TOKEN_EXCHANGE in metadata["grant_types_supported"]


# -- refusals: RFC 8693 §2.2.2 errors, nothing changes -------------------------------------


# One request parameter (or the client's registration) changed from a valid exchange; the
# id names the rule, the comment its section.
# fmt: off
ONE_CHANGE_REFUSALS = [
    # RFC 8693 §2.2.2: a branch, audience or resource the caller may not use is invalid_target.
    pytest.param({}, {"branch_id": "no-such-branch"}, "invalid_target", 400, "no-such-branch",
                 id="unknown-branch-is-invalid-target"),
    pytest.param({"scope": "read"}, {}, "invalid_target", 400, "upstream:google",
                 id="client-without-upstream-google-scope-is-invalid-target"),
    pytest.param({}, {"audience": "yahoo"}, "invalid_target", 400, "yahoo",
                 id="unknown-audience-is-invalid-target"),
    pytest.param({}, {"resource": "https://mybusiness.googleapis.com/"}, "invalid_target", 400,
                 "", id="resource-parameter-is-invalid-target"),
    # RFC 8693 §2.1: subject_token_type is REQUIRED, and only access tokens are accepted.
    pytest.param({}, {"subject_token_type": None}, "invalid_request", 400, "subject_token_type",
                 id="missing-subject-token-type-is-invalid-request"),
    pytest.param({}, {"subject_token_type": "urn:ietf:params:oauth:token-type:id_token"},
                 "invalid_request", 400, "subject_token_type",
                 id="unsupported-subject-token-type-is-invalid-request"),
    pytest.param({}, {"branch_id": None}, "invalid_request", 400, "branch_id",
                 id="missing-branch-id-is-invalid-request"),
    # RFC 6749 §5.2 invalid_scope: the upstream grant does not hold it.
    pytest.param({}, {"scope": f"{BUSINESS_MANAGE} https://www.googleapis.com/auth/drive"},
                 "invalid_scope", 400, "auth/drive",
                 id="scope-wider-than-the-grant-is-invalid-scope"),
    # RFC 6749 §5.2: unauthorized_client (grant not registered), invalid_client (401).
    pytest.param({"grant_types": ["client_credentials"]}, {}, "unauthorized_client", 400, "",
                 id="client-not-registered-for-token-exchange-is-unauthorized-client"),
    pytest.param({}, {"client_secret": "wrong-secret"}, "invalid_client", 401, "",
                 id="wrong-client-secret-is-invalid-client"),
]
# fmt: on


@pytest.mark.parametrize(("client", "change", "error", "status", "mentions"), ONE_CHANGE_REFUSALS)
def test_one_bad_parameter_is_refused_and_changes_nothing(
    upstream, db, google, stale_branch, client, change, error, status, mentions
):
    client_id, secret = exchange_client(db, [stale_branch], **client)
    subject = upstream.client_credentials_token(client_id, secret)
    request = {"branch_id": stale_branch, **change}
    used_secret = request.pop("client_secret", secret)
    branch_id = request.pop("branch_id")
    with nothing_changes(db, google):
        response = exchange(upstream, client_id, used_secret, subject, branch_id, **request)
    assert_refused(response, error, status, mentions=mentions)


@dataclass(frozen=True)
class Caller:
    """A client registered for the exchange and granted the branch, and where to ask."""

    upstream: Any
    start_server: Any
    db: Any
    google: Any
    branch_id: str
    client_id: str
    secret: str

    def token(self, server: Any = None) -> str:
        return (server or self.upstream).client_credentials_token(self.client_id, self.secret)


# Each returns (server to ask, subject token) for a subject token spoiled one way.
def expired_subject_token(caller: Caller) -> tuple[Any, str]:
    short = caller.start_server(OAUTH2_ACCESS_TOKEN_TTL="1", **caller.google.env())
    subject = caller.token(short)
    time.sleep(2.2)
    return short, subject


def revoked_subject_token(caller: Caller) -> tuple[Any, str]:
    subject = caller.token()
    revoked = caller.upstream.post(
        "/oauth2/revoke", auth=(caller.client_id, caller.secret), data={"token": subject}
    )
    assert revoked.status_code == 200
    return caller.upstream, subject


def forged_subject_token(caller: Caller) -> tuple[Any, str]:
    genuine = caller.token()
    header = jwt.get_unverified_header(genuine)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    claims["jti"] = str(uuid.uuid4())
    forged = jwt.encode(
        claims,
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": header["kid"], "typ": "at+jwt"},
    )
    return caller.upstream, forged


def another_clients_subject_token(caller: Caller) -> tuple[Any, str]:
    other_id, other_secret = exchange_client(caller.db, [caller.branch_id])
    return caller.upstream, caller.upstream.client_credentials_token(other_id, other_secret)


# RFC 8693 §2.2.2: an invalid subject_token is invalid_request; the id names how it is
# invalid, the last column what the error_description says.
SUBJECT_TOKEN_REFUSALS = [
    pytest.param(expired_subject_token, "subject_token", id="expired"),
    pytest.param(revoked_subject_token, "revoked", id="revoked"),
    pytest.param(forged_subject_token, "subject_token", id="signed-by-another-key"),
    pytest.param(
        another_clients_subject_token, "not issued to this client", id="issued-to-another-client"
    ),
]


@pytest.mark.parametrize(("spoil", "mentions"), SUBJECT_TOKEN_REFUSALS)
def test_unusable_subject_token_is_invalid_request(
    upstream, start_server, db, google, stale_branch, spoil, mentions
):
    """RFC 8693 §2.2.2: an expired, revoked, forged or foreign subject_token is
    invalid_request, and nothing changes."""
    client_id, secret = exchange_client(db, [stale_branch])
    caller = Caller(upstream, start_server, db, google, stale_branch, client_id, secret)
    server, subject = spoil(caller)
    with nothing_changes(db, google):
        response = exchange(server, client_id, secret, subject, stale_branch)
    assert_refused(response, "invalid_request", mentions=mentions)


# Each returns (client_id, secret, branch asked for, what the error_description names)
# for a branch the client may not broker a token for.
def branch_granted_to_others(db, unique, stale_branch):
    other = unique("other")
    ensure_branch(db, other)
    return (*exchange_client(db, [other]), stale_branch, (stale_branch,))


def deactivated_branch(db, unique, stale_branch):
    client = exchange_client(db, [stale_branch])
    with db.session() as session:
        set_branch_active(session, stale_branch, False)
    return (*client, stale_branch, ("deactivated",))


def unconnected_branch(db, unique, stale_branch):
    branch_id = unique("unconnected")
    ensure_branch(db, branch_id)
    return (*exchange_client(db, [branch_id]), branch_id, (branch_id, "branches connect"))


# RFC 8693 §2.2.2: a branch the client may not use is invalid_target; one it may use but
# nobody has connected to Google yet is invalid_grant (RFC 6749 §5.2).
BRANCH_REFUSALS = [
    pytest.param(branch_granted_to_others, "invalid_target", id="branch-not-granted-to-the-client"),
    pytest.param(deactivated_branch, "invalid_target", id="deactivated-branch"),
    pytest.param(unconnected_branch, "invalid_grant", id="branch-not-connected"),
]


@pytest.mark.parametrize(("setup", "error"), BRANCH_REFUSALS)
def test_branch_that_cannot_be_brokered_is_refused_naming_why(
    upstream, db, google, stale_branch, unique, setup, error
):
    client_id, secret, branch_id, mentions = setup(db, unique, stale_branch)
    subject = upstream.client_credentials_token(client_id, secret)
    with nothing_changes(db, google):
        response = exchange(upstream, client_id, secret, subject, branch_id)
    assert_refused(response, error)
    for text in mentions:
        assert text in response.json()["error_description"], response.text


def test_benchmark_scenario_answers_200(upstream, db):
    """bench/scenario_token_exchange.py stays in step with the grant (no load is run)."""
    import asyncio

    import requests

    from bench.scenario_token_exchange import setup_token_exchange

    request = asyncio.run(setup_token_exchange(upstream.base_url, db.url, db.keys))
    for _ in range(3):
        response = requests.post(
            upstream.url(request.path),
            data=request.body,
            timeout=30,
            headers={
                "Authorization": request.authorization,
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        assert response.status_code == 200, response.text
        assert response.json()["expires_in"] > 80_000
