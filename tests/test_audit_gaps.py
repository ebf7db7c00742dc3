"""The last gaps of issue #11: a network `ip` filter read through its own index keeps
keyset pagination exact; a revocation's summary row names the user and client it
concerns; a user's grant to a client can be withdrawn ("consent revoked") from the admin
API and the command line; and fetching an export's manifest or listing checkpoints is
itself an `audit_read` row. On SQLite and PostgreSQL, every answer checked against the
database."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
import requests
from oauthlib.oauth2.rfc6749.errors import OAuth2Error

from oauth2_server.audit.ipfilter import TICK, Span, network_page
from tests.admin_helpers import (
    PASSWORD,
    Introspector,
    admin_api,
    assert_error,
    event,
    insert_log_rows,
    run_cli,
    seal,
)
from tests.flows import REDIRECT_URI, authorize_with_pkce, exchange_code, login
from tests.flows import oauth_session as new_oauth_session
from tests.test_refresh_rotation import refresh

BASE = datetime(2035, 4, 5, tzinfo=UTC)


@pytest.fixture
def admin(server, db, unique):
    return admin_api(server, db, unique)


def _audit(admin, **params: Any) -> list[dict]:
    page = admin.get("/audit", params={"limit": "1000", **params})
    assert page.status_code == 200, page.text
    return page.json()["items"]


def _jti(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["jti"]


# -- item 1: a network filter's pages ----------------------------------------------------


def _walk(admin, limit: int, **params: Any) -> list[int]:
    """Every page of GET /admin/audit, following `next_cursor`."""
    ids: list[int] = []
    cursor = None
    while True:
        query = {**params, "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        page = admin.get("/audit", params=query)
        assert page.status_code == 200, page.text
        ids += [item["id"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return ids


def test_network_pages_are_the_rows_inside_in_keyset_order(admin, db, unique) -> None:
    """Rows inside 10.9.0.0/16 interleaved with rows outside it, several at one instant
    (the keyset's tie on `id`): pages of 3, in both orders, with and without a time
    range and another filter, are exactly the rows a direct read selects, in order."""
    client = unique("net")
    addresses = ["10.9.0.1", "10.8.255.255", "10.9.255.254", "10.10.0.0", "2001:db8::9"]
    events = []
    for i in range(24):
        moment = BASE + timedelta(seconds=i // 3)  # three rows per instant
        action = "issued" if i % 2 else "refreshed"
        events.append(event(action, moment, client_id=client, ip=addresses[i % 5]))
    insert_log_rows(db, events)
    rows = db.rows(
        "SELECT id, ip, action FROM oauth2_token_logs WHERE client_id = :c ORDER BY created_at, id",
        c=client,
    )
    network = ipaddress.ip_network("10.9.0.0/16")

    def inside(row: Any) -> bool:
        return ipaddress.ip_address(row.ip) in network if ":" not in row.ip else False

    everything = [row.id for row in rows if inside(row)]
    assert len(everything) == 10
    common = {"client_id": client, "ip": "10.9.0.0/16"}
    assert _walk(admin, 3, **common) == everything
    assert _walk(admin, 3, **common, order="desc") == everything[::-1]
    since, until = BASE + timedelta(seconds=2), BASE + timedelta(seconds=6)
    # rows are in insertion order (times never decrease): row i is event i
    ranged = [
        row.id
        for row, made in zip(rows, events, strict=True)
        if inside(row) and since <= made.created_at < until
    ]
    window = {"since": since.isoformat(), "until": until.isoformat()}
    assert _walk(admin, 2, **common, **window) == ranged
    issued = [row.id for row in rows if inside(row) and row.action == "issued"]
    assert _walk(admin, 2, **common, action="issued", order="desc") == issued[::-1]
    listed = run_cli(db, "audit", "query", "--client-id", client, "--ip", "10.9.0.0/16")
    assert listed.returncode == 0, listed.stderr
    assert [item["id"] for item in json.loads(listed.stdout)["items"]] == everything


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("rate", [0.0, 0.05, 3.0, 500.0])
def test_network_windows_tile_the_span_in_page_order(descending: bool, rate: float) -> None:
    """`ipfilter.network_page` alone (no database): whatever the estimated rate, its
    windows are consecutive, never overlap, start where the page starts, and the rows
    they return, concatenated, are the first `limit` rows of the span in page order."""
    start = BASE
    moments = [start + timedelta(seconds=s) for s in (0, 0, 1, 7, 60, 61, 3600, 86400, 9e5)]
    span = Span(start, moments[-1] + TICK, rate)
    for limit in (1, 2, 5, 9, 20):
        windows: list[tuple[datetime, datetime]] = []

        def read(window, n, unordered, windows=windows):
            assert window[0] < window[1] and n > 0
            windows.append(window)
            inside = [m for m in moments if window[0] <= m < window[1]]
            return sorted(inside, reverse=descending)[:n]

        page = network_page(span, descending, limit, read)
        assert page == sorted(moments, reverse=descending)[:limit]
        ordered = windows[::-1] if descending else windows
        assert all(a[1] == b[0] for a, b in zip(ordered, ordered[1:], strict=False))
        assert (windows[0][1] if descending else windows[0][0]) == (
            span.end if descending else span.start
        )


# -- item 2: the summary row of a revocation ----------------------------------------------


def _user_grant(server, db, client_id: str, username: str) -> dict:
    """A signed-in user's token response (code flow with PKCE) from `client_id`."""
    if not db.rows("SELECT id FROM oauth2_users WHERE username = :u", u=username):
        db.create_user(username, PASSWORD)
    result = authorize_with_pkce(server.base_url, client_id, username, PASSWORD)
    return exchange_code(server.base_url, result)


def _app(db, unique) -> str:
    client_id, _ = db.create_client(
        name=unique("app"),
        public=True,
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI],
        scope="read",
    )
    return client_id


def _subject(db, username: str) -> str:
    (row,) = db.rows("SELECT subject FROM oauth2_users WHERE username = :u", u=username)
    return row.subject


def _summary(admin, by: str, value: str) -> dict:
    rows = [r for r in _audit(admin, action="admin_tokens_revoked") if r["details"]["by"] == by]
    (row,) = [r for r in rows if r["details"]["value"] == value]
    return row


def test_a_revocation_summary_names_the_user_and_client_it_concerns(
    server, db, admin, unique
) -> None:
    """By grant (`family_id`) and by token (`jti`): the grant's user and client; by
    client, with one user: that user; with two: no subject, and each token's own
    `token_revoked` row names its user."""
    alice, bob = unique("alice"), unique("bob")
    app = _app(db, unique)
    first = _user_grant(server, db, app, alice)
    family = _family_of(db, first["access_token"])
    assert admin.post("/tokens/revoke", {"family_id": family}).json()["revoked"] == 2
    by_family = _summary(admin, "family_id", family)
    assert by_family["subject"] == _subject(db, alice)
    assert by_family["details"]["target_client_id"] == app
    second = _user_grant(server, db, app, alice)
    jti = _jti(second["access_token"])
    assert admin.post("/tokens/revoke", {"jti": jti}).json()["revoked"] == 1
    by_jti = _summary(admin, "jti", jti)
    assert (by_jti["subject"], by_jti["details"]["target_client_id"]) == (_subject(db, alice), app)
    assert admin.post("/tokens/revoke", {"client_id": app}).json()["revoked"] == 1  # refresh
    assert _summary(admin, "client_id", app)["subject"] == _subject(db, alice)
    shared = _app(db, unique)
    tokens = [_user_grant(server, db, shared, name) for name in (alice, bob)]
    assert admin.post("/tokens/revoke", {"client_id": shared}).json()["revoked"] == 4
    by_client = _summary(admin, "client_id", shared)
    assert by_client["subject"] is None and by_client["details"]["target_client_id"] == shared
    for name, token in zip((alice, bob), tokens, strict=True):
        (row,) = _audit(admin, action="token_revoked", token_id=_jti(token["access_token"]))
        assert row["subject"] == _subject(db, name)
        assert row["details"]["target_client_id"] == shared
    per_token = _audit(admin, action="token_revoked", target_client_id=shared)
    assert len(per_token) == 4 and {r["subject"] for r in per_token} == {
        _subject(db, alice),
        _subject(db, bob),
    }


def _family_of(db, access_token: str) -> str:
    (row,) = db.rows(
        "SELECT family_id FROM oauth2_access_tokens WHERE jti = :j", j=_jti(access_token)
    )
    return row.family_id


# -- item 3: consent revoked ---------------------------------------------------------------


def _asks_consent(server, client_id: str, username: str) -> bool:
    """A fresh browser signs in as `username` and asks `client_id`'s authorization: True
    when the consent page is shown, False when a code comes straight back."""
    oauth = new_oauth_session(client_id, "read")
    url, _state = oauth.authorization_url(server.base_url + "/oauth2/authorize")
    browser = requests.Session()
    page = browser.get(url, allow_redirects=False, timeout=30)
    done = login(browser, server.base_url, page, username, PASSWORD)
    assert done.status_code == 303, done.text
    page = browser.get(server.base_url + done.headers["location"], allow_redirects=False)
    if page.status_code == 200:
        return 'name="decision"' in page.text
    assert page.status_code == 302, page.text
    return False


def _grants(server, db, unique) -> dict[str, Any]:
    """Alice holds two grants to `app` and one to `other`; Bob one to `app`."""
    alice, bob = unique("alice"), unique("bob")
    app, other = _app(db, unique), _app(db, unique)
    return {
        "alice": alice,
        "bob": bob,
        "app": app,
        "other": other,
        "mine": [_user_grant(server, db, app, alice) for _ in range(2)],
        "alice_other": _user_grant(server, db, other, alice),
        "bob_app": _user_grant(server, db, app, bob),
        # an authorization code Alice got for `app` and the client has not redeemed yet
        "pending": authorize_with_pkce(server.base_url, app, alice, PASSWORD),
    }


def _check_withdrawn(server, db, unique, g: dict[str, Any], answer: dict[str, Any]) -> None:
    """Alice's tokens for `app` are dead (introspection, refresh); her grant to `other`
    and Bob's to `app` live; the consent page asks her again for `app` only."""
    assert answer["revoked"] == 4 and answer["consent_forgotten"] is True
    assert answer["codes_deleted"] == 1
    with pytest.raises(OAuth2Error, match="invalid_grant"):  # the pending code is gone
        exchange_code(server.base_url, g["pending"])
    rs = Introspector(server, db, unique)
    for token in g["mine"]:
        assert rs.active(token["access_token"]) is False
        assert rs.active(token["refresh_token"]) is False
        refused = refresh(server.base_url, g["app"], token["refresh_token"])
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    for token, client in ((g["alice_other"], g["other"]), (g["bob_app"], g["app"])):
        assert rs.active(token["access_token"]) is True
        assert refresh(server.base_url, client, token["refresh_token"]).status_code == 200
    assert _asks_consent(server, g["app"], g["alice"]) is True
    assert _asks_consent(server, g["other"], g["alice"]) is False


def _check_rows(admin, db, g: dict[str, Any]) -> dict:
    """The `consent_revoked` row, found by target_subject and by target_client_id, and
    one `token_revoked` row per token it revoked, each found by its token id."""
    subject = _subject(db, g["alice"])
    (row,) = _audit(admin, action="consent_revoked", target_subject=subject)
    assert _audit(admin, action="consent_revoked", target_client_id=g["app"]) == [row]
    assert row["subject"] == subject and row["details"]["target_client_id"] == g["app"]
    assert row["details"]["revoked"] == 4
    per_token = _audit(admin, action="token_revoked", target_subject=subject)
    assert len(per_token) == 4
    assert {r["details"]["revoked_by"]["client_id"] for r in per_token} == {g["app"]}
    for token in g["mine"]:
        (one,) = _audit(admin, action="token_revoked", token_id=_jti(token["access_token"]))
        assert one["details"]["target_client_id"] == g["app"]
    direct = db.count("oauth2_token_logs", "action = 'consent_revoked' AND subject = :s", s=subject)
    assert direct == 1
    return row


def test_an_admin_withdraws_a_users_grant_to_one_client(server, db, admin, unique) -> None:
    g = _grants(server, db, unique)
    subject = _subject(db, g["alice"])
    response = admin.delete(f"/users/{subject}/grants/{g['app']}")
    assert response.status_code == 200, response.text
    assert response.json()["subject"] == subject and response.json()["client_id"] == g["app"]
    _check_withdrawn(server, db, unique, g, response.json())
    row = _check_rows(admin, db, g)
    assert row["client_id"] == admin.client_id and row["details"]["via"] == "api"
    assert row["details"]["admin_jti"]
    assert_error(admin.delete(f"/users/nobody-{subject}/grants/{g['app']}"), 404, "subject")
    assert_error(admin.delete(f"/users/{subject}/grants/no-such-client"), 404, "client_id")
    again = admin.delete(f"/users/{subject}/grants/{g['app']}")
    assert again.status_code == 200 and again.json()["revoked"] == 0


def test_an_operator_withdraws_a_grant_from_the_command_line(server, db, admin, unique) -> None:
    g = _grants(server, db, unique)
    subject = _subject(db, g["alice"])
    result = run_cli(db, "users", "revoke-grant", subject, g["app"])
    assert result.returncode == 0, result.stderr
    _check_withdrawn(server, db, unique, g, json.loads(result.stdout))
    row = _check_rows(admin, db, g)
    assert row["client_id"] is None and row["details"]["via"] == "cli"
    assert row["details"]["operator"] and row["details"]["authenticated"] is False
    missing = run_cli(db, "users", "revoke-grant", subject, "no-such-client")
    assert missing.returncode != 0 and "client_id" in missing.stderr


def test_the_openapi_document_lists_the_grant_route(server) -> None:
    document = requests.get(server.url("/admin/openapi.json"), timeout=30).json()
    operation = document["paths"]["/admin/users/{subject}/grants/{client_id}"]["delete"]
    assert "404" in operation["responses"] and operation["summary"]
    assert operation["security"] == [{"bearer": ["admin"]}]


# -- item 4: manifests and checkpoints read ----------------------------------------------


def test_fetching_a_manifest_is_an_audit_read(server, db, admin, unique) -> None:
    """GET /admin/audit/exports/{id}/manifest, found or not, is an `audit_read` row by
    the admin client (the CLI has no manifest read: its export writes the manifest file
    and is audited as `audit_exported`)."""
    client = unique("exported")
    insert_log_rows(db, [event("issued", BASE, client_id=client)])
    export = admin.get("/audit/export", params={"format": "jsonl", "client_id": client})
    assert export.status_code == 200, export.text
    export_id = export.headers["x-audit-export-id"]
    assert admin.get(f"/audit/exports/{export_id}/manifest").status_code == 200
    missing = "0" * len(export_id)
    assert_error(admin.get(f"/audit/exports/{missing}/manifest"), 404, "export_id")
    reads = [
        r
        for r in _audit(admin, action="audit_read", client_id=admin.client_id)
        if r["details"].get("read") == "manifest"
    ]
    assert [(r["details"]["export_id"], r["details"]["rows"]) for r in reads] == [
        (export_id, 1),
        (missing, 0),
    ]
    assert all(r["details"]["via"] == "api" and r["details"]["admin_jti"] for r in reads)


def test_listing_checkpoints_is_an_audit_read(server, db, admin) -> None:
    seal(db)
    listed = run_cli(db, "audit", "checkpoints", "--json", "--retention")
    assert listed.returncode == 0, listed.stderr
    answer = json.loads(listed.stdout)
    reads = [
        r
        for r in _audit(admin, action="audit_read", order="desc")
        if r["details"].get("read") == "checkpoints"
    ]
    assert reads, "the listing wrote no audit_read row"
    last = reads[0]["details"]
    assert last["rows"] == len(answer["checkpoints"]) and last["via"] == "cli"
    assert last["retention_records"] == len(answer["retention"])
    assert last["operator"] and last["authenticated"] is False
