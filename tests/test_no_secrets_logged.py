"""No secret at any log level (DESIGN.md invariant 1; issue #8 item 5).

A live server at DEBUG with the access log on (conftest's default), once with text and
once with JSON lines (OAUTH2_LOG_FORMAT), is driven
through every flow: client credentials (Basic and post), authorization code + PKCE
with login and consent (RFC 7636), refresh (RFC 6749 §6), introspection (RFC 7662),
revocation (RFC 7009), a branch connected to the fake Google and RFC 8693 token
exchange, the admin API, a wrong client secret and a wrong password. Then nothing the
server must keep to itself — client secrets, passwords, access/refresh tokens,
authorization codes, code verifiers, upstream codes/tokens/state, nor their SHA-256 or
argon2 hashes as stored — may appear in its log.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import requests

from oauth2_server.logs import redact
from oauth2_server.oauth.clients import OAuthClient
from oauth2_server.storage.clients import ClientRecord
from oauth2_server.storage.users import UserRecord
from tests.admin_helpers import PASSWORD, admin_api
from tests.conftest import Database, LiveServer, start_live_server
from tests.fake_google import (
    callback,
    connection_url,
    ensure_branch,
    exchange,
    exchange_client,
    follow_consent,
)
from tests.flows import REDIRECT_URI, authorize_with_pkce, exchange_code, form_fields, query_of


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture(scope="module", params=["text", "json"])
def upstream(
    request: pytest.FixtureRequest,
    database: Database,
    google: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveServer]:
    """conftest's `upstream` server, once per log format (OAUTH2_LOG_FORMAT)."""
    live = start_live_server(
        database,
        tmp_path_factory.mktemp(f"secrets-{request.param}"),
        OAUTH2_LOG_FORMAT=request.param,
        **google.env("google"),
    )
    yield live
    live.stop()


def test_no_secret_token_code_or_hash_is_logged_at_debug(upstream, db, google, unique):
    server = upstream
    secrets: dict[str, str] = {}  # what it is → value that must never be logged

    # client_credentials, HTTP Basic and client_secret_post (RFC 6749 §2.3.1, §4.4)
    svc_id, svc_secret = db.create_client(name=unique("svc"), scope="read introspect")
    post_id, post_secret = db.create_client(
        name=unique("post"), token_endpoint_auth_method="client_secret_post"
    )
    assert svc_secret and post_secret
    secrets |= {"svc secret": svc_secret, "post secret": post_secret}
    secrets["cc token"] = server.client_credentials_token(svc_id, svc_secret)
    response = server.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": post_id,
            "client_secret": post_secret,
        },
    )
    assert response.status_code == 200, response.text
    secrets["post token"] = response.json()["access_token"]

    # authorization code + PKCE with login and consent, by a confidential web app
    web_id, web_secret = db.create_client(
        name=unique("web"),
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI],
        scope="read",
    )
    assert web_secret
    secrets["web secret"] = web_secret
    username = unique("logan")
    db.create_user(username, PASSWORD)
    secrets["password"] = PASSWORD
    result = authorize_with_pkce(server.base_url, web_id, username, PASSWORD)
    secrets["code"] = result.params["code"]
    secrets["code verifier"] = result.oauth._code_verifier
    token = exchange_code(server.base_url, result, client_secret=web_secret)
    secrets["code access token"] = token["access_token"]
    secrets["first refresh token"] = token["refresh_token"]

    # refresh (RFC 6749 §6), then introspect and revoke (RFC 7662, RFC 7009)
    response = server.post(
        "/oauth2/token",
        auth=(web_id, web_secret),
        data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
    )
    assert response.status_code == 200, response.text
    refreshed = response.json()
    secrets["refreshed access token"] = refreshed["access_token"]
    secrets["second refresh token"] = refreshed["refresh_token"]
    for kind in ("access_token", "refresh_token"):
        response = server.post(
            "/oauth2/introspect", auth=(svc_id, svc_secret), data={"token": refreshed[kind]}
        )
        assert response.status_code == 200 and response.json()["active"], response.text
    response = server.post(
        "/oauth2/revoke", auth=(web_id, web_secret), data={"token": refreshed["refresh_token"]}
    )
    assert response.status_code == 200, response.text

    # a wrong client secret, a wrong password, a replayed code
    wrong_secret = "wrong-" + svc_secret[::-1]
    secrets["wrong secret"] = wrong_secret
    response = server.post(
        "/oauth2/token", auth=(svc_id, wrong_secret), data={"grant_type": "client_credentials"}
    )
    assert response.status_code == 401
    browser = requests.Session()
    page = browser.get(
        server.url("/oauth2/authorize"),
        params={
            "response_type": "code",
            "client_id": web_id,
            "redirect_uri": REDIRECT_URI,
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256",
            "state": "xyz",
        },
        timeout=30,
    )
    action, fields = form_fields(page.text)
    wrong_password = "wrong " + PASSWORD
    secrets["wrong password"] = wrong_password
    fields.update(username=username, password=wrong_password)
    response = browser.post(server.url(action), data=fields, allow_redirects=False, timeout=30)
    assert response.status_code in (200, 400, 401), response.text
    response = server.post(
        "/oauth2/token",
        auth=(web_id, web_secret),
        data={
            "grant_type": "authorization_code",
            "code": secrets["code"],
            "redirect_uri": REDIRECT_URI,
            "code_verifier": secrets["code verifier"],
        },
    )
    assert response.status_code == 400

    # the admin API: a client created (secret shown once), its secret rotated, a user
    admin = admin_api(server, db, unique)
    secrets["admin token"] = admin.token
    created = admin.post("/clients", {"name": unique("made")})
    assert created.status_code == 201, created.text
    secrets["created secret"] = created.json()["client_secret"]
    rotated = admin.post(f"/clients/{created.json()['client_id']}/secret")
    assert rotated.status_code == 200, rotated.text
    secrets["rotated secret"] = rotated.json()["client_secret"]
    admin_password = "a long admin-chosen password"
    secrets["admin-set password"] = admin_password
    user = admin.post("/users", {"username": unique("ursula"), "password": admin_password})
    assert user.status_code == 201, user.text

    # a branch connected to the fake Google (its callback carries Google's code), then
    # RFC 8693 token exchange for the branch's Google access token
    branch_id = unique("branch")
    ensure_branch(db, branch_id)
    location = follow_consent(connection_url(server, db, branch_id))
    secrets["upstream code"] = query_of(location)["code"]
    secrets["upstream state"] = query_of(location)["state"]
    assert callback(location).status_code == 200
    secrets["google access token"] = google.issued_access_tokens[-1]
    secrets["google refresh token"] = google.issued_refresh_tokens[-1]
    secrets["google client secret"] = google.client_secret
    exchanger, exchanger_secret = exchange_client(db, [branch_id])
    secrets["exchanger secret"] = exchanger_secret
    subject = server.client_credentials_token(exchanger, exchanger_secret)
    secrets["subject token"] = subject
    response = exchange(server, exchanger, exchanger_secret, subject, branch_id)
    assert response.status_code == 200, response.text

    # what storage keeps: the SHA-256 of every opaque value, and the stored hashes
    hashes = {f"sha256 of {name}": sha256(value) for name, value in secrets.items()}
    client_ids = [svc_id, post_id, web_id, admin.client_id, exchanger]
    for client_id in [*client_ids, created.json()["client_id"]]:
        stored = db.scalar(
            "SELECT secret_hash FROM oauth2_clients WHERE client_id = :c", c=client_id
        )
        hashes[f"stored secret hash of {client_id}"] = stored
    for (stored,) in db.rows(
        "SELECT password_hash FROM oauth2_users WHERE username IN (:a, :b)",
        a=username,
        b=user.json()["username"],
    ):
        hashes[f"stored password hash {stored[:12]}"] = stored
    for (stored,) in db.rows("SELECT token_hash FROM oauth2_refresh_tokens"):
        hashes[f"refresh hash {stored[:8]}"] = stored
    for (stored,) in db.rows("SELECT code_hash FROM oauth2_authorization_codes"):
        hashes[f"code hash {stored[:8]}"] = stored

    time.sleep(0.5)  # the read-only audit rows flush (and any log line they cause)
    log = server.log()
    forms = {}  # each value as sent, and as it appears percent-encoded in a URL
    for name, value in {**secrets, **hashes}.items():
        if value:
            forms |= {
                name: value,
                f"{name} (url)": quote(value, safe=""),
                f"{name} (form)": quote_plus(value),
            }
    leaked = sorted({name for name, value in forms.items() if value in log})
    assert not leaked, f"in the log: {leaked}"
    # the test can only bite if the server really logged at DEBUG with access lines
    assert "DEBUG" in log, log[-2000:]
    access = "oauth2_server.access"
    assert access in log and "POST /oauth2/token 200" in log, log[-2000:]
    assert "GET /upstream/{provider}/callback" in log, log[-2000:]  # a template, no query
    if server.env["OAUTH2_LOG_FORMAT"] == "json":
        assert all(json.loads(line) for line in log.splitlines() if line.strip())


def test_records_leave_secrets_and_hashes_out_of_repr(db, unique):
    """The first line of defence, at the source: Authlib logs `%r` of the client."""
    record = ClientRecord(
        "c1", "n", "sha256$" + "ab" * 32, "client_secret_basic", (), (), "read", True, None
    )
    client = OAuthClient(record, verified_secret="the-presented-secret")
    user = UserRecord(1, "sub", "name", "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", True)
    for text in (repr(client), repr(record), repr(user)):
        assert "ab" * 32 not in text and "the-presented-secret" not in text, text
        assert "argon2" not in text, text


def test_redaction_names_query_json_repr_and_authorization_forms():
    """The second line of defence: values of secret parameters, whatever the notation."""
    lines = {
        '"GET /upstream/google/callback?code=4/0AX-y&state=s1 HTTP/1.1" 302': ["4/0AX-y", "s1"],
        "Issue token {'access_token': 'eyJa.eyJb.c', 'refresh_token': 'r-1'} to x": [
            "eyJa.eyJb.c",
            "r-1",
        ],
        '{"client_secret": "cs-1", "password": "pw 1"}': ["cs-1", "pw 1"],
        "OAuthClient(record=R(secret_hash='$argon2id$v=19$m=1$s$h'), verified_secret='v-1')": [
            "argon2id",
            "v-1",
        ],
        "[('authorization', 'Basic YWJjOmRlZg==')]": ["YWJjOmRlZg=="],
        "code_verifier=cv-1&subject_token=st-1&token=t-1": ["cv-1", "st-1", "t-1"],
    }
    for line, values in lines.items():
        cleaned = redact(line)
        assert "[redacted]" in cleaned
        assert not [v for v in values if v in cleaned], cleaned
    kept = "GET /oauth2/authorize?response_type=code&code_challenge=abc&client_id=app"
    assert redact(kept) == kept
