"""Statistics (issue #14 item 4): GET /admin/stats and `oauth2-server stats` answer what
the rows say, computed here directly from the tables with the ORM (not the stats
queries): live tokens, hourly counts, failed client authentications, upstream grants,
branches needing consent."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from oauth2_server.db.models import (
    AccessToken,
    Branch,
    BranchUpstreamLink,
    Client,
    RefreshToken,
    StatsHourly,
    TokenLog,
    UpstreamCredential,
)
from oauth2_server.registry.stats import collect_stats
from oauth2_server.storage.stats import FAILED
from tests.admin_helpers import admin_api, cli_json, run_cli
from tests.flows import authorize_with_pkce, exchange_code, public_app

PASSWORD = "correct horse battery"
ACTIONS = {"issued": "issued", "refreshed": "refreshed", "exchanged": "exchanged"}
ACTIONS["revoked"] = "token_revoked"


@pytest.fixture(scope="module")
def live(module_server):
    return module_server(OAUTH2_AUDIT_FLUSH_INTERVAL="0.1")


def stats_of(admin) -> dict[str, Any]:
    response = admin.get("/stats")
    assert response.status_code == 200, response.text
    return response.json()


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def expected_groups(counter: Counter, names: tuple[str, ...]) -> dict[tuple, int]:
    return {key if isinstance(key, tuple) else (key,): n for key, n in counter.items()}


def assert_groups(answer: dict[str, Any], counter: Counter, names: tuple[str, ...]) -> None:
    """The answer's groups are the counter's largest (all of them when not truncated)."""
    got = {tuple(g[n] for n in names): g["count"] for g in answer["groups"]}
    want = expected_groups(counter, names)
    assert answer["truncated"] == (len(want) > 100)
    if not answer["truncated"]:
        assert got == want
    else:
        assert all(want[key] == n for key, n in got.items())
        assert sorted(got.values(), reverse=True) == sorted(want.values(), reverse=True)[:100]


def direct_figures(db, now: datetime, since: datetime, until: datetime) -> dict[str, Any]:
    """The figures computed straight from the rows, in Python."""
    with db.session() as s:
        access = s.execute(
            select(
                AccessToken.client_id,
                AccessToken.grant_type,
                AccessToken.expires_at,
                AccessToken.revoked_at,
            )
        ).all()
        refresh = s.execute(
            select(
                RefreshToken.client_id,
                RefreshToken.expires_at,
                RefreshToken.rotated_at,
                RefreshToken.revoked_at,
            )
        ).all()
        logs = s.execute(
            select(TokenLog.action, TokenLog.created_at, TokenLog.client_id).where(
                TokenLog.action.in_([*ACTIONS.values(), "client_auth_failed"])
            )
        ).all()
        grants = s.execute(
            select(
                UpstreamCredential.id,
                UpstreamCredential.provider,
                UpstreamCredential.needs_consent,
                UpstreamCredential.refresh_failures,
            )
        ).all()
        registered = set(s.scalars(select(Client.client_id)))
        links = s.execute(
            select(BranchUpstreamLink.branch_id, BranchUpstreamLink.credential_id)
        ).all()
    in_window = [r for r in logs if since <= r.created_at < until]
    hourly = Counter(
        (r.action, r.created_at.replace(minute=0, second=0, microsecond=0)) for r in in_window
    )
    consent = {g.id for g in grants if g.needs_consent}
    return {
        "access": Counter(
            (r.client_id, r.grant_type)
            for r in access
            if r.expires_at > now and r.revoked_at is None
        ),
        "refresh": Counter(
            r.client_id
            for r in refresh
            if r.expires_at > now and r.rotated_at is None and r.revoked_at is None
        ),
        "hourly": hourly,
        "failed": Counter(
            r.client_id if r.client_id in registered else None
            for r in in_window
            if r.action == "client_auth_failed"
        ),
        "grants": Counter(
            (
                g.provider if g.provider in ("google", "microsoft") else "other",
                "needs_consent"
                if g.needs_consent
                else ("refresh_failing" if g.refresh_failures else "ok"),
            )
            for g in grants
        ),
        "consent_branches": sorted(
            link.branch_id for link in links if link.credential_id in consent
        ),
    }


def assert_matches_rows(db, stats: dict[str, Any]) -> None:
    """Every figure of `stats` equals the one computed from the rows."""
    now = at(stats["generated_at"])
    since, until = at(stats["hourly"]["since"]), at(stats["hourly"]["until"])
    assert until - since == timedelta(hours=24) and since <= now < until
    direct = direct_figures(db, now, since, until)
    live_tokens = stats["live_tokens"]
    assert_groups(live_tokens["access"], direct["access"], ("client_id", "grant_type"))
    assert live_tokens["access"]["total"] == sum(direct["access"].values())
    assert_groups(live_tokens["refresh"], direct["refresh"], ("client_id",))
    assert live_tokens["refresh"]["total"] == sum(direct["refresh"].values())
    hours = stats["hourly"]["hours"]
    assert [at(h["hour"]) for h in hours] == [since + timedelta(hours=i) for i in range(24)]
    for h in hours:
        for name, action in ACTIONS.items():
            assert h[name] == direct["hourly"][(action, at(h["hour"]))], (h, name)
    assert_groups(stats["failed_client_auth"], direct["failed"], ("client_id",))
    assert stats["failed_client_auth"]["total"] == sum(direct["failed"].values())
    grants = {(g["provider"], g["state"]): g["count"] for g in stats["upstream_grants"]}
    assert grants == dict(direct["grants"])
    branches = stats["branches_needing_consent"]
    assert branches["total"] == len(direct["consent_branches"])
    assert [b["branch_id"] for b in branches["items"]] == direct["consent_branches"][:100]


def plant_grant(db, unique, needs_consent: bool, failures: int = 0) -> str:
    """A branch linked to an upstream grant in the given state (rows only: the stats
    read states, never tokens); the branch id."""
    now = datetime.now(UTC)
    branch_id = unique("branch")
    with db.session() as s:
        s.add(Branch(branch_id=branch_id, name=branch_id, created_at=now, updated_at=now))
        credential = UpstreamCredential(
            id=str(uuid.uuid4()),
            provider="google",
            account_sub=unique("sub"),
            scope="",
            encryption_key_id="test-1",
            access_token_ciphertext=b"x",
            refresh_token_ciphertext=b"y",
            access_expires_at=now + timedelta(hours=1),
            needs_consent=needs_consent,
            consent_error="invalid_grant" if needs_consent else None,
            refresh_failures=failures,
            created_at=now,
            updated_at=now,
        )
        s.add(credential)
        s.flush()
        s.add(
            BranchUpstreamLink(
                branch_id=branch_id, provider="google", credential_id=credential.id, linked_at=now
            )
        )
    return branch_id


def token_activity(live, db, unique) -> dict[str, Any]:
    """Tokens issued (3 client credentials, 1 code flow), refreshed (1), revoked (1) and 2
    failed client authentications, by clients of this test."""
    cc, secret = db.create_client(name=unique("cc"))
    for _ in range(3):
        live.client_credentials_token(cc, secret)
    app = public_app(db, unique)
    user = db.create_user(unique("st"), PASSWORD)
    token = exchange_code(
        live.base_url, authorize_with_pkce(live.base_url, app, user.username, PASSWORD)
    )
    refreshed = live.post(
        "/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "client_id": app,
            "refresh_token": token["refresh_token"],
        },
    )
    assert refreshed.status_code == 200, refreshed.text
    revoked = live.post(
        "/oauth2/revoke", data={"token": refreshed.json()["refresh_token"], "client_id": app}
    )
    assert revoked.status_code == 200, revoked.text
    bad, _ = db.create_client(name=unique("bad"))
    for _ in range(2):
        failed = live.post(
            "/oauth2/token", auth=(bad, "wrong secret"), data={"grant_type": "client_credentials"}
        )
        assert failed.status_code == 401
    time.sleep(0.5)  # failed authentications are audited in batches (flush 0.1 s)
    return {"cc": cc, "app": app, "bad": bad}


def totals(stats: dict[str, Any]) -> dict[str, int]:
    hours = stats["hourly"]["hours"]
    return {name: sum(h[name] for h in hours) for name in ACTIONS}


def test_stats_equal_the_rows_and_follow_activity(live, db, unique):
    admin = admin_api(live, db, unique)
    before = stats_of(admin)
    consent_branch = plant_grant(db, unique, needs_consent=True)
    plant_grant(db, unique, needs_consent=False, failures=2)
    ids = token_activity(live, db, unique)
    after = stats_of(admin)
    assert_matches_rows(db, after)

    grown = {k: totals(after)[k] - totals(before)[k] for k in ACTIONS}
    # 3 client credentials + 1 code exchange + the admin's own token; 1 rotation; the
    # revoked refresh token (its family's access tokens go with it)
    assert grown["issued"] >= 4 and grown["refreshed"] == 1 and grown["revoked"] >= 1
    failed = {g["client_id"]: g["count"] for g in after["failed_client_auth"]["groups"]}
    assert failed.get(ids["bad"]) == 2 or after["failed_client_auth"]["truncated"]
    live_access = after["live_tokens"]["access"]
    assert live_access["total"] - before["live_tokens"]["access"]["total"] >= 3
    listed = {(g["client_id"], g["grant_type"]): g["count"] for g in live_access["groups"]}
    assert listed.get((ids["cc"], "client_credentials")) == 3 or live_access["truncated"]
    assert consent_branch in [b["branch_id"] for b in after["branches_needing_consent"]["items"]]
    states = {(g["provider"], g["state"]) for g in after["upstream_grants"]}
    assert {("google", "needs_consent"), ("google", "refresh_failing")} <= states


def test_cli_stats_is_the_same_service(live, db, unique):
    admin = admin_api(live, db, unique)
    from_api = stats_of(admin)
    from_cli = cli_json(db, "stats", "--json")
    assert_matches_rows(db, from_cli)
    for answer in (from_api, from_cli):
        answer.pop("generated_at")
    assert from_cli.keys() == from_api.keys()
    assert from_cli["upstream_grants"] == from_api["upstream_grants"]
    text = run_cli(db, "stats")
    assert text.returncode == 0, text.stderr
    assert "live access tokens:" in text.stdout and "branches needing consent:" in text.stdout


def test_stats_need_the_admin_scope_and_take_no_parameters(live, db, unique):
    admin = admin_api(live, db, unique)
    client_id, secret = db.create_client(name=unique("plain"))
    plain = live.client_credentials_token(client_id, secret)
    assert admin.get("/stats", token=plain).status_code == 403
    assert live.get("/admin/stats").status_code == 401
    response = admin.get("/stats?since=-1h")
    assert response.status_code == 400 and response.json()["field"] == "since"


def test_settled_hours_come_from_the_rollup_and_equal_the_rows(live, db, unique):
    """Seen from three hours later, the current hour has settled: its figures come from
    rollup rows stored by this call (in a transaction rolled back afterwards, so the
    live server never reads a rollup of an hour still in progress)."""
    token_activity(live, db, unique)
    unregistered = live.post(
        "/oauth2/token", auth=(unique("nobody"), "x"), data={"grant_type": "client_credentials"}
    )
    assert unregistered.status_code == 401
    time.sleep(0.5)
    current_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    later = datetime.now(UTC) + timedelta(hours=3)
    with Session(db.engine) as session:
        stats = collect_stats(session, now=later)
        rolled = session.execute(
            select(StatsHourly.action, StatsHourly.client_id, StatsHourly.count).where(
                StatsHourly.hour == current_hour
            )
        ).all()
        assert_matches_rows(db, stats)
        session.rollback()
    by_action = {a: n for a, c, n in rolled if c == ""}
    assert set(by_action) == {"issued", "refreshed", "exchanged", "token_revoked", FAILED}
    assert by_action["issued"] >= 4 and by_action[FAILED] >= 3
    failures = {c: n for a, c, n in rolled if a == FAILED and c != ""}
    assert failures.get("?", 0) >= 1  # the unregistered id, never a group of its own
    assert sum(failures.values()) == by_action[FAILED]
    assert db.count("oauth2_stats_hourly", "hour >= :h", h=current_hour) == 0  # rolled back
