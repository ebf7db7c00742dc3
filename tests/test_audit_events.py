"""Security-relevant events that are rows (issue #11 item 1): a successful sign-in, the
user's consent decision (RFC 6749 §4.1.1: the resource owner grants or denies), the end
of a sign-in session, a new signing key (RFC 7517: first key and every rotation, naming
the operator), and seal, verify and janitor runs."""

from __future__ import annotations

import json
import os
import pwd
import time

import requests

from tests.admin_helpers import admin_api, run_cli
from tests.flows import authorize_with_pkce, form_fields, oauth_session, public_app

PASSWORD = "correct horse battery"


def _rows(admin, deadline: float = 15.0, **params) -> list[dict]:
    """Audit rows matching `params`, waiting for the batched writer (sign-in rows are
    buffered, OAUTH2_AUDIT_FLUSH_INTERVAL)."""
    end = time.monotonic() + deadline
    while True:
        page = admin.get("/audit", params={"limit": "1000", **params})
        assert page.status_code == 200, page.text
        items = page.json()["items"]
        if items or time.monotonic() > end:
            return items
        time.sleep(0.2)


def test_sign_in_and_consent_decisions_are_rows(server, db, unique) -> None:
    admin = admin_api(server, db, unique)
    client_id = public_app(db, unique, scope="read write")
    granted_user = db.create_user(unique("grants"), PASSWORD)
    authorize_with_pkce(
        server.base_url, client_id, granted_user.username, PASSWORD, scope="read write"
    )
    denied_user = db.create_user(unique("denies"), PASSWORD)
    authorize_with_pkce(server.base_url, client_id, denied_user.username, PASSWORD, approve=False)

    (signed_in,) = _rows(admin, action="login_succeeded", subject=granted_user.subject)
    assert signed_in["ip"] == "127.0.0.1"
    (granted,) = _rows(admin, action="consent_granted", subject=granted_user.subject)
    assert granted["client_id"] == client_id
    assert granted["details"]["scopes"] == ["read", "write"]
    (denied,) = _rows(admin, action="consent_denied", subject=denied_user.subject)
    assert denied["client_id"] == client_id and denied["details"]["scopes"] == ["read"]
    assert _rows(admin, deadline=0, action="consent_granted", subject=denied_user.subject) == []


def test_signing_out_is_a_row(server, db, unique) -> None:
    admin = admin_api(server, db, unique)
    client_id = public_app(db, unique, scope="read write")
    user = db.create_user(unique("leaves"), PASSWORD)
    url, _ = oauth_session(client_id, "read").authorization_url(server.url("/oauth2/authorize"))
    browser = requests.Session()
    action, fields = form_fields(browser.get(url, timeout=30).text)
    fields.update(username=user.username, password=PASSWORD)
    assert browser.post(server.url(action), data=fields, allow_redirects=False).status_code == 303
    _action, fields = form_fields(browser.get(url, timeout=30).text)
    out = browser.post(
        server.url(action),
        data={"action": "logout", "csrf_token": fields["csrf_token"]},
        allow_redirects=False,
        timeout=30,
    )
    assert out.status_code == 303
    (row,) = _rows(admin, action="signed_out", subject=user.subject)
    assert row["ip"] == "127.0.0.1"


def test_a_key_rotation_is_a_row_naming_the_operator(server, db, unique) -> None:
    admin = admin_api(server, db, unique)
    result = run_cli(db, "keys", "rotate", "--json", env={"LOGNAME": "mallory"})
    assert result.returncode == 0, result.stderr
    kid = json.loads(result.stdout)["kid"]
    rows = [r for r in _rows(admin, action="signing_key_created") if r["details"]["kid"] == kid]
    (row,) = rows
    assert row["details"]["reason"] == "rotation" and row["details"]["alg"] == "ES256"
    assert row["details"]["operator"] == pwd.getpwuid(os.geteuid()).pw_name != "mallory"
    first = [
        r
        for r in _rows(admin, action="signing_key_created")
        if r["details"]["reason"] == "first key"
    ]
    assert first  # the key the database's first start generated


def test_seal_verify_and_janitor_runs_are_rows(server, db, unique) -> None:
    admin = admin_api(server, db, unique)
    before = {
        a: len(_rows(admin, deadline=0, action=a))
        for a in ("audit_sealed", "audit_verified", "janitor_run")
    }
    for command in (
        ["audit", "seal", "--delay", "3600"],
        ["audit", "verify"],
        ["janitor", "--no-seal"],
    ):
        result = run_cli(db, *command)
        assert result.returncode in (0, 1), result.stderr  # verify exits 1 on tampering
    after = {a: _rows(admin, deadline=0, action=a) for a in before}
    for action, rows in after.items():
        assert len(rows) == before[action] + 1, action
        assert rows[-1]["details"]["via"] == "cli"
    assert "sealed" in after["audit_sealed"][-1]["details"]
    assert "checked" in after["audit_verified"][-1]["details"]
    assert "deleted" in after["janitor_run"][-1]["details"]


def test_a_failed_sign_in_as_nobody_is_findable_by_a_keyed_digest(server, db, unique) -> None:
    """A username no user has is recorded as `unknown:` + a keyed digest (never the name):
    `audit username-digest NAME` (any case) gives the subject to search for."""
    admin = admin_api(server, db, unique)
    client_id = public_app(db, unique, scope="read write")
    ghost = unique("Ghost")
    url, _ = oauth_session(client_id, "read").authorization_url(server.url("/oauth2/authorize"))
    browser = requests.Session()
    action, fields = form_fields(browser.get(url, timeout=30).text)
    fields.update(username=ghost, password="wrong password here")
    refused = browser.post(server.url(action), data=fields, allow_redirects=False, timeout=30)
    assert refused.status_code == 401, refused.text
    digest = run_cli(db, "audit", "username-digest", ghost.lower())
    assert digest.returncode == 0, digest.stderr
    subject = json.loads(digest.stdout)["subject"]
    assert subject.startswith("unknown:") and ghost.lower() not in subject
    (row,) = _rows(admin, action="login_failed", subject=subject)
    assert ghost not in json.dumps(row) and ghost.lower() not in json.dumps(row)
