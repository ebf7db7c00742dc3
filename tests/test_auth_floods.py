"""Hostile authentication traffic cannot burn the CPU, lock out its victim or grow memory
(issue #8 item 2; RFC 6749 §2.3.1 client authentication, §10.10 guessing; OWASP device
cookies; DESIGN.md invariants 8-10).

The servers here trust X-Forwarded-For from 127.0.0.1, so a test can play many IPs. Tests
that share a `module_server` (same limit) each use their own IPs, clients and users, and
read /metrics as differences over their own requests.
argon2 work is observed through `oauth2_argon2_verifications_total` in /metrics and held
limiter keys through `oauth2_limiter_keys`; nothing of ours is patched.
"""

from __future__ import annotations

import base64
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from oauth2_server.crypto.hashing import hash_client_secret, hash_secret
from tests.flows import REDIRECT_URI, form_fields, oauth_session

PASSWORD = "correct horse battery staple"
TRUST_PROXY = {"OAUTH2_FORWARDED_ALLOW_IPS": "127.0.0.1"}


def metric(live: Any, name: str) -> float:
    """A figure from the server's /metrics (this single worker's)."""
    text = live.get("/metrics").text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics:\n{text}"
    return float(found.group(1))


def token_request(
    live: Any,
    auth: tuple[str, str] | None = None,
    ip: str | None = None,
    headers: dict[str, str] | None = None,
    **data: str,
) -> requests.Response:
    all_headers = dict(headers or {})
    if ip:
        all_headers["X-Forwarded-For"] = ip
    return live.post(
        "/oauth2/token",
        auth=auth,
        headers=all_headers,
        data={"grant_type": "client_credentials", **data},
    )


def wait_for(condition: Any, timeout: float = 30.0) -> Any:
    """Poll until `condition()` is truthy (audit rows are written in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def make_legacy(db: Any, client_id: str, secret: str) -> str:
    """Store the secret as an argon2id hash, as before migration 0005."""
    legacy = hash_secret(secret)
    with db.engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE oauth2_clients SET secret_hash = %s WHERE client_id = %s"
            if db.backend == "postgresql"
            else "UPDATE oauth2_clients SET secret_hash = ? WHERE client_id = ?",
            (legacy, client_id),
        )
    return legacy


# -- client secrets --------------------------------------------------------------------


def test_wrong_secret_flood_from_many_ips_never_refuses_the_correct_secret(module_server, db):
    """A correct secret always passes: its check is a constant-time compare before any
    limit, however many failures others caused from however many IPs."""
    live = module_server(OAUTH2_CLIENT_AUTH_FAILURE_LIMIT="3", **TRUST_PROXY)
    client_id, secret = db.create_client()
    answers = []
    for i in range(30):
        answers.append(token_request(live, (client_id, "wrong"), ip=f"10.1.{i}.1").status_code)
        if i % 3 == 2:
            good = token_request(live, (client_id, secret), ip=f"10.2.{i}.1")
            assert good.status_code == 200, (i, good.status_code, good.text)
    assert set(answers) == {401, 429}  # the limit bites the guesser, never the client
    assert answers[:3] == [401, 401, 401]


def test_wrong_secrets_spread_over_many_clients_are_limited_per_ip(module_server, db):
    """RFC 6749 §10.10: a guesser trying one wrong secret for each of many clients stays
    under every per-client limit; the per-IP count stops it (429 with Retry-After). Other
    IPs are not affected, and the correct secret still passes from the guessing IP."""
    live = module_server(OAUTH2_CLIENT_AUTH_FAILURE_LIMIT="3", **TRUST_PROXY)
    clients = [db.create_client() for _ in range(5)]
    answers = [
        token_request(live, (client_id, "wrong"), ip="10.15.0.1").status_code
        for client_id, _ in clients
    ]
    assert answers == [401, 401, 401, 429, 429]
    refused = token_request(live, (clients[4][0], "wrong"), ip="10.15.0.1")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert token_request(live, (clients[4][0], "wrong"), ip="10.15.0.2").status_code == 401
    assert token_request(live, clients[0], ip="10.15.0.1").status_code == 200


def test_new_secrets_are_stored_as_sha256(server, db):
    client_id, secret = db.create_client()
    stored = db.scalar("SELECT secret_hash FROM oauth2_clients WHERE client_id = :c", c=client_id)
    assert stored == hash_client_secret(secret) and stored.startswith("sha256$")
    assert server.client_credentials_token(client_id, secret)


def test_legacy_argon2_secret_verifies_once_then_is_stored_as_sha256(start_server, db):
    live = start_server()
    client_id, secret = db.create_client()
    legacy = make_legacy(db, client_id, secret)
    before = metric(live, "oauth2_argon2_verifications_total")
    assert token_request(live, (client_id, secret)).status_code == 200
    stored = db.scalar("SELECT secret_hash FROM oauth2_clients WHERE client_id = :c", c=client_id)
    assert stored != legacy and stored == hash_client_secret(secret)
    assert token_request(live, (client_id, secret)).status_code == 200
    assert token_request(live, (client_id, "wrong")).status_code == 401
    assert metric(live, "oauth2_argon2_verifications_total") == before + 1


def test_concurrent_wrong_secrets_for_a_legacy_client_run_at_most_the_limit(module_server, db):
    """The attempt is reserved BEFORE argon2 runs, so concurrent guesses cannot overshoot."""
    live = module_server(OAUTH2_CLIENT_AUTH_FAILURE_LIMIT="5", **TRUST_PROXY)
    client_id, secret = db.create_client()
    make_legacy(db, client_id, secret)
    before = metric(live, "oauth2_argon2_verifications_total")
    with ThreadPoolExecutor(20) as pool:
        statuses = list(
            pool.map(
                lambda i: token_request(live, (client_id, f"wrong-{i}"), ip=f"10.3.{i}.1"),
                range(20),
            )
        )
    assert metric(live, "oauth2_argon2_verifications_total") - before <= 5
    assert {r.status_code for r in statuses} <= {401, 429}
    assert sum(r.status_code == 429 for r in statuses) >= 15


def test_limiter_memory_is_capped_under_a_spray_of_client_ids(start_server, db):
    live = start_server(OAUTH2_LIMITER_MAX_KEYS="100", **TRUST_PROXY)

    def attempt(i: int) -> int:
        client_id = f"{i:06d}".ljust(60, "x")
        ip = f"10.4.{i // 250}.{i % 250}"
        return token_request(live, (client_id, "wrong"), ip=ip).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = set(pool.map(attempt, range(2000)))
    assert statuses <= {401, 429}
    assert metric(live, "oauth2_limiter_keys") <= 100
    assert metric(live, "oauth2_limiter_refusal_windows") <= 100


# -- HTTP Basic and client ids ---------------------------------------------------------


def basic(raw: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


@pytest.mark.parametrize(
    ("headers", "form", "status"),
    [
        pytest.param({"Authorization": "Basic "}, {}, 401, id="basic-empty"),
        pytest.param({"Authorization": "Basic"}, {}, 401, id="basic-no-credentials"),
        pytest.param({"Authorization": "Basic !!!not-base64"}, {}, 401, id="basic-not-base64"),
        pytest.param(basic(b"\xff\xfe:secret"), {}, 401, id="basic-not-utf8"),
        pytest.param(basic(b"abc"), {}, 401, id="basic-no-colon"),
        pytest.param(basic(b"a\x00b:secret"), {}, 401, id="basic-nul-in-id"),
        pytest.param(basic(b"a%00b:secret"), {}, 401, id="basic-encoded-nul-in-id"),
        pytest.param(basic(b"a\x1bb:secret"), {}, 401, id="basic-control-in-id"),
        pytest.param(basic(b"x" * 200 + b":secret"), {}, 401, id="basic-over-long-id"),
        pytest.param(
            {}, {"client_id": "x" * 200, "client_secret": "s"}, 400, id="post-over-long-id"
        ),
        pytest.param({}, {"client_id": "a\x00b", "client_secret": "s"}, 400, id="post-nul-in-id"),
        pytest.param({}, {"client_id": "a\x00b"}, 400, id="public-nul-in-id"),
    ],
)
def test_malformed_client_credentials_are_json_invalid_client(server, db, headers, form, status):
    """RFC 6749 §2.3.1/§5.2, RFC 7617: never a 500, never a lookup of an impossible id."""
    for path in ("/oauth2/token", "/oauth2/introspect", "/oauth2/revoke"):
        response = server.post(
            path, headers=headers, data={"grant_type": "client_credentials", "token": "t", **form}
        )
        assert response.status_code == status, (path, response.text)
        assert response.headers["content-type"].startswith("application/json")
        # invalid_request if a generic check of the form saw the control character first
        assert response.json()["error"] in {"invalid_client", "invalid_request"}
        if status == 401:
            assert response.headers["www-authenticate"].startswith("Basic")


# -- login -----------------------------------------------------------------------------


def login_page(live: Any, client_id: str, browser: requests.Session) -> requests.Response:
    oauth = oauth_session(client_id, "read")
    url, _ = oauth.authorization_url(live.url("/oauth2/authorize"))
    page = browser.get(url, allow_redirects=False, timeout=30)
    assert page.status_code == 200 and 'name="username"' in page.text, page.text[:300]
    return page


def submit(
    live: Any, browser: requests.Session, page: requests.Response, user: str, password: str, ip: str
) -> requests.Response:
    action, fields = form_fields(page.text)
    fields.update(username=user, password=password)
    return browser.post(
        live.url(action),
        data=fields,
        headers={"X-Forwarded-For": ip},
        allow_redirects=False,
        timeout=60,
    )


def web_client(db: Any) -> str:
    client_id, _ = db.create_client(
        grant_types=["authorization_code"], redirect_uris=[REDIRECT_URI], scope="read"
    )
    return client_id


def concurrent_logins(
    live: Any, db: Any, workers: int, attempts: list[tuple[str, str, str]]
) -> list[requests.Response]:
    """Post the (username, password, ip) `attempts` from `workers` threads to one login
    page of a new web client, all in one browser session."""
    browser = requests.Session()
    page = login_page(live, web_client(db), browser)
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda attempt: submit(live, browser, page, *attempt), attempts))


def test_guessing_elsewhere_never_locks_out_a_browser_with_its_device_cookie(
    module_server, db, unique
):
    """OWASP device cookies: 20 wrong passwords from rotating IPs exhaust the per-username
    budget of browsers WITHOUT the cookie; the user's own browser keeps signing in."""
    live = module_server(OAUTH2_CLIENT_AUTH_FAILURE_LIMIT="5", **TRUST_PROXY)
    client_id = web_client(db)
    user = db.create_user(unique("dora"), PASSWORD)
    own = requests.Session()
    first = submit(live, own, login_page(live, client_id, own), user.username, PASSWORD, "10.5.0.1")
    assert first.status_code == 303 and "oauth2_device" in own.cookies

    guesser = requests.Session()
    page = login_page(live, client_id, guesser)
    answers = [
        submit(live, guesser, page, user.username, f"guess-{i}", f"10.6.{i}.1").status_code
        for i in range(20)
    ]
    assert answers[:5] == [401] * 5 and set(answers[5:]) == {429}

    # The same browser later (its sign-in session over), from another network:
    later = requests.Session()
    later.cookies.set("oauth2_device", own.cookies["oauth2_device"])
    again = submit(
        live, later, login_page(live, client_id, later), user.username, PASSWORD, "10.7.0.1"
    )
    assert again.status_code == 303, again.text[:300]

    stranger = requests.Session()
    refused = submit(
        live, stranger, login_page(live, client_id, stranger), user.username, PASSWORD, "10.8.0.1"
    )
    assert refused.status_code == 429  # the documented per-username rule, no device cookie
    assert int(refused.headers["retry-after"]) >= 1
    # Login refusals are audited: the first at once, the rest summarised per window.
    assert wait_for(lambda: db.count("oauth2_token_logs", "action = 'login_throttled'") >= 1)


def test_concurrent_wrong_logins_never_exceed_the_limit_in_argon2_runs(module_server, db, unique):
    live = module_server(OAUTH2_CLIENT_AUTH_FAILURE_LIMIT="5", **TRUST_PROXY)
    user = db.create_user(unique("eve"), PASSWORD)
    before = metric(live, "oauth2_argon2_verifications_total")
    attempts = [(user.username, f"x{i}", "10.9.0.1") for i in range(20)]
    answers = concurrent_logins(live, db, 20, attempts)
    assert {a.status_code for a in answers} <= {401, 429}
    assert metric(live, "oauth2_argon2_verifications_total") - before <= 5


def test_full_argon2_queue_answers_503_with_retry_after(start_server, db, unique):
    live = start_server(
        OAUTH2_ARGON2_CONCURRENCY="1",
        OAUTH2_ARGON2_QUEUE="0",
        OAUTH2_CLIENT_AUTH_FAILURE_LIMIT="1000",
        **TRUST_PROXY,
    )
    attempts = [(f"nobody-{i}", "pw", f"10.10.{i}.1") for i in range(48)]
    answers = concurrent_logins(live, db, 16, attempts)
    assert {a.status_code for a in answers} <= {401, 503}
    busy = [a for a in answers if a.status_code == 503]
    assert busy, "no request found the argon2 queue full"
    assert all(int(a.headers["retry-after"]) >= 1 for a in busy)
    assert metric(live, "oauth2_argon2_busy_total") == len(busy)


def test_login_limiter_memory_is_capped_under_a_spray_of_usernames(start_server, db):
    live = start_server(OAUTH2_LIMITER_MAX_KEYS="40", OAUTH2_ARGON2_QUEUE="200", **TRUST_PROXY)
    attempts = [(f"{i:04d}".ljust(60, "u"), "pw", f"10.11.{i}.1") for i in range(120)]
    answers = concurrent_logins(live, db, 4, attempts)
    assert {a.status_code for a in answers} == {401}
    assert metric(live, "oauth2_limiter_keys") <= 40


# -- auditing refusals ------------------------------------------------------------------


def test_repeated_refusals_write_one_summarising_row(start_server, db):
    """The first 429 for a key writes its row at once; the other refusals of the window
    are summarised in one row whose `refusals` counts all of them (the first included)."""
    live = start_server(
        OAUTH2_CLIENT_AUTH_FAILURE_LIMIT="2", OAUTH2_CLIENT_AUTH_FAILURE_WINDOW="8", **TRUST_PROXY
    )
    client_id, _ = db.create_client()
    statuses = [
        token_request(live, (client_id, "wrong"), ip="10.12.0.1").status_code for _ in range(52)
    ]
    assert statuses == [401, 401] + [429] * 50

    def rows() -> list[Any]:
        return db.rows(
            "SELECT details FROM oauth2_token_logs"
            " WHERE action = 'client_auth_throttled' AND client_id = :c",
            c=client_id,
        )

    def details() -> list[dict[str, Any]]:
        import json

        return [d if isinstance(d, dict) else json.loads(d) for (d,) in rows()]

    assert wait_for(lambda: len(rows()) == 2, timeout=40), details()
    first, summary = sorted(details(), key=lambda d: d.get("summary", False))
    assert first["refusals"] == 1 and "summary" not in first
    assert summary["refusals"] == 50 and summary["summary"] is True
    assert db.count("oauth2_token_logs", "action = 'client_auth_failed' AND client_id = :c",
                    c=client_id) == 2  # fmt: skip


# -- one deployment, one truth ----------------------------------------------------------


def test_failures_counted_at_one_instance_throttle_at_another(start_server, db, unique):
    """DESIGN.md invariant 9: on PostgreSQL the counters are shared by every instance.
    (The embedded SQLite default counts per process, as README says.)"""
    if db.backend != "postgresql":
        pytest.skip("SQLite counts failures per process (README)")
    settings = {"OAUTH2_CLIENT_AUTH_FAILURE_LIMIT": "3", **TRUST_PROXY}
    a, b = start_server(**settings), start_server(**settings)
    client_id, secret = db.create_client()
    for i in range(3):
        assert token_request(a, (client_id, "wrong"), ip=f"10.13.{i}.1").status_code == 401
    assert token_request(b, (client_id, "wrong"), ip="10.13.9.1").status_code == 429
    assert token_request(b, (client_id, secret), ip="10.13.9.1").status_code == 200

    web = web_client(db)
    user = db.create_user(unique("finn"), PASSWORD)
    browser = requests.Session()
    page = login_page(a, web, browser)
    for i in range(3):
        assert submit(a, browser, page, user.username, "bad", f"10.14.{i}.1").status_code == 401
    other = requests.Session()
    refused = submit(b, other, login_page(b, web, other), user.username, PASSWORD, "10.14.9.1")
    assert refused.status_code == 429


def test_janitor_deletes_ended_limiter_windows(db):
    """The shared counters are housekeeping, not history: ended windows go."""
    from datetime import UTC, datetime, timedelta

    from oauth2_server.db.models import AuthFailure
    from tests.admin_helpers import run_cli

    now = datetime.now(UTC)
    with db.session() as session:
        session.add(AuthFailure(key_hash="e" * 64, window_start=now - timedelta(hours=2), count=9))
        session.add(AuthFailure(key_hash="f" * 64, window_start=now, count=3))
    result = run_cli(db, "janitor", "--no-seal")
    assert result.returncode == 0, result.stderr
    assert db.count("oauth2_auth_failures", "key_hash = :k", k="e" * 64) == 0
    assert db.count("oauth2_auth_failures", "key_hash = :k", k="f" * 64) == 1
