"""Refresh rotation under concurrency and lost answers (issue #9 item 2; RFC 6749 §6,
RFC 9700 §4.14.2; `storage.tokens.redeem_refresh_token`).

`OAUTH2_REFRESH_REUSE_GRACE` = 0: of parallel uses of one refresh token exactly one wins
and every loser revokes the family (the winner's new tokens included).

`OAUTH2_REFRESH_REUSE_GRACE` = N: within N seconds of a token's rotation, a repeat use by
the same client of the most recently rotated token (the parent of the current one) gets
a fresh pair and supersedes the current refresh token: nothing is revoked, the family
keeps exactly one current refresh token, and the `refreshed` row is flagged
`refresh_grace`. An older ancestor, a use after the grace, another client, or a revoked
or ended family gets no grace.

On PostgreSQL every test runs on two instances (2 workers each) of one deployment,
alternating requests between them (DESIGN.md invariant 9); on SQLite on one server.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import requests

from oauth2_server.storage import tokens as token_storage
from oauth2_server.storage import utcnow
from tests.flows import REDIRECT_URI, authorize_with_pkce, exchange_code

PASSWORD = "correct horse battery"
GRACE = 5  # seconds
PARALLEL = 20


@pytest.fixture
def deployment(request, database) -> Callable[..., list]:
    """`deployment(grace, **env)`: the servers of one deployment with that grace — two
    instances (`module_instances`) on PostgreSQL, one server on SQLite. Tests asking for
    the same settings share one deployment (started once per module): each reads only
    the rows of its own client."""

    def start(grace: float, **env: str) -> list:
        env["OAUTH2_REFRESH_REUSE_GRACE"] = str(grace)
        if database.backend == "postgresql":
            return list(request.getfixturevalue("module_instances")(**env))
        return [request.getfixturevalue("module_server")(**env)]

    return start


class Grant:
    """A public client's grant: its id, the code exchange's tokens, an introspector."""

    def __init__(self, servers: list, db, unique) -> None:
        self.servers = servers
        self.db = db
        self.client_id, _ = db.create_client(
            name=unique("grace"),
            public=True,
            grant_types=["authorization_code", "refresh_token"],
            redirect_uris=[REDIRECT_URI],
            scope="read",
        )
        user = db.create_user(unique("gail"), PASSWORD)
        base = servers[0].base_url
        self.first = exchange_code(
            base, authorize_with_pkce(base, self.client_id, user.username, PASSWORD)
        )
        self.introspector, self.secret = db.create_client(scope="introspect")

    def refresh(self, refresh_token: str, n: int = 0, client_id: str | None = None):
        """Refresh at server `n` (modulo the deployment's size)."""
        return self.servers[n % len(self.servers)].post(
            "/oauth2/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": client_id or self.client_id,
            },
        )

    def active(self, token: str) -> bool:
        """Introspection's answer (RFC 7662), which every instance must agree on."""
        answers = set()
        for live in self.servers:
            answer = live.post(
                "/oauth2/introspect", auth=(self.introspector, self.secret), data={"token": token}
            )
            assert answer.status_code == 200, answer.text
            answers.add(answer.json()["active"])
        assert len(answers) == 1, answers
        return answers.pop()

    def in_parallel(self, refresh_token: str, count: int = PARALLEL) -> list:
        """`count` uses released together by a barrier, alternating between instances."""
        barrier = threading.Barrier(count)
        responses: list = [None] * count

        def run(i: int) -> None:
            barrier.wait()
            responses[i] = self.refresh(refresh_token, i)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return responses

    def family(self) -> list[tuple]:
        """(token_hash, rotated_at, revoked_at) of the grant's refresh tokens, oldest first."""
        return [
            tuple(row)
            for row in self.db.rows(
                "SELECT token_hash, rotated_at, revoked_at FROM oauth2_refresh_tokens"
                " WHERE client_id = :c ORDER BY id",
                c=self.client_id,
            )
        ]

    def current(self) -> list[str]:
        """Hashes of the family's current refresh tokens (not rotated, not revoked)."""
        return [h for h, rotated, revoked in self.family() if rotated is None and revoked is None]

    def flags(self, action: str) -> list[list[str]]:
        rows = self.db.rows(
            "SELECT flags FROM oauth2_token_logs WHERE client_id = :c AND action = :a ORDER BY id",
            c=self.client_id,
            a=action,
        )
        return [json.loads(f) if isinstance(f, str) else list(f) for (f,) in rows]

    def snapshot(self) -> tuple:
        """Every row the grant owns, to show that a refused request changed nothing."""
        return (
            self.family(),
            self.db.rows(
                "SELECT jti, revoked_at FROM oauth2_access_tokens WHERE client_id = :c"
                " ORDER BY jti",
                c=self.client_id,
            ),
            self.db.count("oauth2_token_logs", "client_id = :c", c=self.client_id),
        )


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def refused(response: requests.Response) -> bool:
    return response.status_code == 400 and response.json()["error"] == "invalid_grant"


def utc(value: object) -> datetime:
    """A timestamp read with raw SQL (text on SQLite), in UTC."""
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def test_without_grace_parallel_uses_have_one_winner_and_revoke_the_family(deployment, db, unique):
    grant = Grant(deployment(0), db, unique)

    responses = grant.in_parallel(grant.first["refresh_token"])

    assert sorted(r.status_code for r in responses) == [200] + [400] * (PARALLEL - 1)
    winner = next(r.json() for r in responses if r.status_code == 200)
    # RFC 9700 §4.14.2: the losers' reuse revoked the whole family, the winner's new
    # tokens included; nothing of the grant is active anywhere.
    assert not grant.active(grant.first["access_token"])
    assert not grant.active(winner["access_token"])
    assert not grant.active(winner["refresh_token"])
    assert refused(grant.refresh(winner["refresh_token"], 1))
    assert len(grant.family()) == 2
    assert all(revoked is not None for _, _, revoked in grant.family())
    assert len(grant.flags("refresh_reuse")) == PARALLEL - 1
    assert grant.flags("refreshed") == [[]]


def test_with_grace_parallel_uses_all_succeed_and_one_refresh_token_stays_current(
    deployment, db, unique
):
    grant = Grant(deployment(GRACE), db, unique)

    responses = grant.in_parallel(grant.first["refresh_token"])

    assert [r.status_code for r in responses] == [200] * PARALLEL, [r.text for r in responses]
    bodies = [r.json() for r in responses]
    # Nothing was revoked: every access token issued is active at every instance.
    for access in [grant.first["access_token"], *(b["access_token"] for b in bodies)]:
        assert grant.active(access)
    assert all(revoked is None for _, _, revoked in grant.family())
    assert grant.flags("refresh_reuse") == []
    # One winner; each other use was a grace use that superseded the current token.
    refreshed = grant.flags("refreshed")
    assert len(refreshed) == PARALLEL
    assert sum("refresh_grace" in flags for flags in refreshed) == PARALLEL - 1
    # The family has exactly one current refresh token: the one issued last.
    issued = {digest(b["refresh_token"]): b["refresh_token"] for b in bodies}
    (current,) = grant.current()
    latest = issued[current]
    for token in issued.values():
        assert grant.active(token) == (token == latest)
    assert not grant.active(grant.first["refresh_token"])
    # ... and it works: a normal rotation, not a grace use.
    after = grant.refresh(latest, 1)
    assert after.status_code == 200, after.text
    assert grant.flags("refreshed")[-1] == []
    assert grant.current() == [digest(after.json()["refresh_token"])]


def test_grace_retry_after_a_lost_answer_supersedes_the_lost_token(deployment, db, unique):
    """The crash case: the rotation committed but its answer never arrived; the client's
    retry within the grace gets a fresh pair instead of revoking the family."""
    grant = Grant(deployment(GRACE), db, unique)
    lost = grant.refresh(grant.first["refresh_token"], 0).json()  # never seen by the client

    retry = grant.refresh(grant.first["refresh_token"], 1)

    assert retry.status_code == 200, retry.text
    kept = retry.json()
    assert grant.active(lost["access_token"]) and grant.active(kept["access_token"])
    assert grant.current() == [digest(kept["refresh_token"])]
    assert not grant.active(lost["refresh_token"])  # superseded
    assert grant.flags("refreshed")[-1] == ["refresh_grace"]
    assert grant.refresh(kept["refresh_token"], 0).status_code == 200
    # A superseded token is spent like any rotated one: using it revokes the family.
    assert refused(grant.refresh(lost["refresh_token"], 1))
    assert grant.current() == []
    assert len(grant.flags("refresh_reuse")) == 1


def test_grace_does_not_cover_an_older_ancestor(deployment, db, unique):
    grant = Grant(deployment(GRACE), db, unique)
    r0 = grant.first["refresh_token"]
    r1 = grant.refresh(r0, 0).json()["refresh_token"]
    second = grant.refresh(r1, 1)
    assert second.status_code == 200
    # r1 is the most recently rotated token: its repeat use is a grace use.
    again = grant.refresh(r1, 0)
    assert again.status_code == 200, again.text
    current = again.json()

    # r0 is two rotations back, still within the grace period: reuse, family revoked.
    assert refused(grant.refresh(r0, 1))

    assert grant.current() == []
    assert not grant.active(current["access_token"])
    assert not grant.active(second.json()["access_token"])
    assert refused(grant.refresh(current["refresh_token"], 0))
    assert len(grant.flags("refresh_reuse")) == 1


def test_grace_ends_after_its_seconds_then_reuse_revokes_the_family(deployment, db, unique):
    grant = Grant(deployment(GRACE), db, unique)
    r0 = grant.first["refresh_token"]
    rotated = grant.refresh(r0, 0)
    assert rotated.status_code == 200
    ((_, rotated_at, _), _) = grant.family()
    time.sleep(max(0.0, GRACE - (utcnow() - utc(rotated_at)).total_seconds()) + 0.5)

    assert refused(grant.refresh(r0, 1))

    assert grant.current() == []
    assert not grant.active(rotated.json()["access_token"])
    assert grant.flags("refresh_reuse") == [["refresh_reuse"]]


def test_grace_is_for_the_same_client_only(deployment, db, unique):
    grant = Grant(deployment(GRACE), db, unique)
    r0 = grant.first["refresh_token"]
    rotated = grant.refresh(r0, 0).json()
    other, _ = db.create_client(
        name=unique("other"),
        public=True,
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI],
        scope="read",
    )
    before = grant.snapshot()

    assert refused(grant.refresh(r0, 1, client_id=other))

    assert grant.snapshot() == before  # no grace, no revocation, no row
    assert grant.active(rotated["access_token"])
    assert grant.refresh(rotated["refresh_token"], 0).status_code == 200


def test_a_revoked_family_gets_no_grace(deployment, db, unique):
    grant = Grant(deployment(GRACE), db, unique)
    r0 = grant.first["refresh_token"]
    assert grant.refresh(r0, 0).status_code == 200
    (family_id,) = {
        f
        for (f,) in db.rows(
            "SELECT family_id FROM oauth2_refresh_tokens WHERE client_id = :c", c=grant.client_id
        )
    }
    with db.session() as session:
        token_storage.revoke_family(session, family_id, utcnow())
    tokens = db.count("oauth2_refresh_tokens", "client_id = :c", c=grant.client_id)

    assert refused(grant.refresh(r0, 1))

    assert db.count("oauth2_refresh_tokens", "client_id = :c", c=grant.client_id) == tokens
    assert "refresh_grace" not in sum(grant.flags("refreshed"), [])


def test_an_ended_family_gets_no_grace(deployment, db, unique):
    """RFC 9700 §4.14.2 absolute lifetime (`OAUTH2_REFRESH_FAMILY_MAX_AGE`) outranks grace."""
    grant = Grant(deployment(30, OAUTH2_REFRESH_FAMILY_MAX_AGE="3"), db, unique)
    r0 = grant.first["refresh_token"]
    assert grant.refresh(r0, 0).status_code == 200
    ((_, rotated_at, _), _) = grant.family()
    end = db.scalar(
        "SELECT family_expires_at FROM oauth2_refresh_tokens WHERE client_id = :c LIMIT 1",
        c=grant.client_id,
    )
    time.sleep(max(0.0, (utc(end) - utcnow()).total_seconds()) + 0.3)
    assert (utcnow() - utc(rotated_at)).total_seconds() < 30  # still inside the grace
    tokens = db.count("oauth2_refresh_tokens", "client_id = :c", c=grant.client_id)

    assert refused(grant.refresh(r0, 1))

    assert db.count("oauth2_refresh_tokens", "client_id = :c", c=grant.client_id) == tokens
