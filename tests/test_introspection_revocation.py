"""Introspection (RFC 7662) and revocation (RFC 7009) through the live server."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
from sqlalchemy import text

from tests.flows import REDIRECT_URI, authorize_with_pkce, exchange_code

PASSWORD = "correct horse battery"


@pytest.fixture
def service(db):
    """A confidential service with its own token, and a resource server allowed to
    introspect any token (scope `introspect`)."""
    client_id, secret = db.create_client(scope="read")
    rs_id, rs_secret = db.create_client(name="resource server", scope="introspect")
    return client_id, secret, rs_id, rs_secret


def public_client_tokens(server, db, username, requested="read", **client):
    """A public client registered with `client` (PKCE, refresh tokens) and the token
    response a new user got through it for the `requested` scope: (client_id, tokens)."""
    public_id, _ = db.create_client(
        public=True,
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI],
        **client,
    )
    user = db.create_user(username, PASSWORD)
    code = authorize_with_pkce(server.base_url, public_id, user.username, PASSWORD, requested)
    return public_id, exchange_code(server.base_url, code)


def test_introspection_describes_active_access_token(server, service):
    client_id, secret, rs_id, rs_secret = service
    token = server.client_credentials_token(client_id, secret)
    claims = jwt.decode(token, options={"verify_signature": False})
    for path in ("/oauth2/introspect", "/introspect"):
        response = server.post(
            path, auth=(rs_id, rs_secret), data={"token": token, "token_type_hint": "access_token"}
        )
        assert response.status_code == 200
        body = response.json()
        assert body["active"] is True
        assert body["client_id"] == client_id and body["sub"] == client_id
        assert body["scope"] == "read" and body["jti"] == claims["jti"]
        assert body["exp"] == claims["exp"] and body["iss"] == server.base_url
        assert response.headers["cache-control"] == "no-store"


def test_introspection_requires_client_authentication(server, db, service):
    client_id, secret, _, _ = service
    token = server.client_credentials_token(client_id, secret)
    anonymous = server.post("/oauth2/introspect", data={"token": token})
    assert anonymous.status_code in (400, 401)
    assert anonymous.json()["error"] == "invalid_client"
    wrong = server.post("/oauth2/introspect", auth=(client_id, "wrong"), data={"token": token})
    assert wrong.status_code == 401 and "WWW-Authenticate" in wrong.headers


def test_public_client_cannot_introspect_even_its_own_tokens(server, db, unique):
    """RFC 7662 §2.1 asks for client authentication; a public client (`none`, RFC 6749
    §2.1) has none, so presenting only its `client_id` is `invalid_client`, and it learns
    nothing about its own tokens."""
    public_id, tokens = public_client_tokens(
        server, db, unique("paula"), name="public app", scope="read"
    )
    for kind in ("access_token", "refresh_token"):
        response = server.post(
            "/oauth2/introspect", data={"token": tokens[kind], "client_id": public_id}
        )
        assert response.status_code in (400, 401), (kind, response.text)
        assert response.json()["error"] == "invalid_client"
        assert "active" not in response.json()


def test_client_without_introspect_scope_sees_only_its_own_tokens(server, db, service):
    client_id, secret, _, _ = service
    other_id, other_secret = db.create_client(scope="read")
    token = server.client_credentials_token(client_id, secret)
    own = server.post("/oauth2/introspect", auth=(client_id, secret), data={"token": token})
    assert own.json()["active"] is True
    foreign = server.post(
        "/oauth2/introspect", auth=(other_id, other_secret), data={"token": token}
    )
    assert foreign.json() == {"active": False}


@pytest.mark.parametrize("garbage", ["not-a-token", "a.b.c", "x" * 2000])
def test_unknown_or_forged_tokens_are_inactive(server, service, garbage):
    _, _, rs_id, rs_secret = service
    response = server.post("/oauth2/introspect", auth=(rs_id, rs_secret), data={"token": garbage})
    assert response.status_code == 200 and response.json() == {"active": False}


def test_token_signed_by_another_key_is_inactive(server, service):
    from cryptography.hazmat.primitives.asymmetric import ec

    client_id, secret, rs_id, rs_secret = service
    real = server.client_credentials_token(client_id, secret)
    claims = jwt.decode(real, options={"verify_signature": False})
    header = jwt.get_unverified_header(real)
    forged = jwt.encode(
        claims,
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": header["kid"], "typ": "at+jwt"},
    )
    response = server.post("/oauth2/introspect", auth=(rs_id, rs_secret), data={"token": forged})
    assert response.json() == {"active": False}


def test_introspection_is_audited_in_batches(server, db, service):
    """DESIGN invariant 6: read-only events are recorded (batched, bound documented)."""
    client_id, secret, rs_id, rs_secret = service
    token = server.client_credentials_token(client_id, secret)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    server.post("/oauth2/introspect", auth=(rs_id, rs_secret), data={"token": token})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not db.count(
        "oauth2_token_logs", "action = 'introspected' AND token_id = :j", j=jti
    ):
        time.sleep(0.1)
    rows = db.rows(
        "SELECT client_id, ip FROM oauth2_token_logs "
        "WHERE action = 'introspected' AND token_id = :j",
        j=jti,
    )
    assert rows == [(rs_id, "127.0.0.1")]


def test_revoking_access_token_makes_it_inactive_and_is_audited(server, db, service):
    client_id, secret, rs_id, rs_secret = service
    token = server.client_credentials_token(client_id, secret)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    response = server.post("/oauth2/revoke", auth=(client_id, secret), data={"token": token})
    assert response.status_code == 200
    assert server.post(
        "/oauth2/introspect", auth=(rs_id, rs_secret), data={"token": token}
    ).json() == {"active": False}
    assert db.count("oauth2_access_tokens", "jti = :j AND revoked_at IS NOT NULL", j=jti) == 1
    assert db.count("oauth2_token_logs", "action = 'revoked' AND token_id = :j", j=jti) == 1


def test_client_cannot_revoke_another_clients_token(server, db, service):
    client_id, secret, rs_id, rs_secret = service
    other_id, other_secret = db.create_client()
    token = server.client_credentials_token(client_id, secret)
    response = server.post("/oauth2/revoke", auth=(other_id, other_secret), data={"token": token})
    assert response.status_code == 400
    assert (
        server.post("/oauth2/introspect", auth=(rs_id, rs_secret), data={"token": token}).json()[
            "active"
        ]
        is True
    )


def test_revocation_answers_are_the_ones_readme_states(server, db, service):
    """README "Introspection and revocation": 200 for a revoked, already revoked or
    unknown token (RFC 7009 §2.2); another client's token is refused with 400
    `invalid_grant` (§2.1); a missing `token` is 400 `invalid_request` and a wrong secret
    401 `invalid_client` (§2.2.1, RFC 6749 §5.2)."""
    client_id, secret, _, _ = service
    other_id, other_secret = db.create_client()
    token = server.client_credentials_token(client_id, secret)

    def revoke(auth, **data):
        return server.post("/oauth2/revoke", auth=auth, data=data)

    foreign = revoke((other_id, other_secret), token=token)
    assert (foreign.status_code, foreign.json()["error"]) == (400, "invalid_grant")
    missing = revoke((client_id, secret))
    assert (missing.status_code, missing.json()["error"]) == (400, "invalid_request")
    wrong = revoke((client_id, "wrong"), token=token)
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert db.count("oauth2_access_tokens", "jti = :j AND revoked_at IS NULL", j=jti) == 1
    assert revoke((client_id, secret), token=token).status_code == 200
    assert revoke((client_id, secret), token=token).status_code == 200  # already revoked
    assert revoke((client_id, secret), token="nope").status_code == 200  # unknown


def test_revoking_unknown_token_is_200_and_changes_nothing(server, db, service):
    """RFC 7009 §2.2: invalid tokens do not cause an error."""
    client_id, secret, _, _ = service
    before = db.count("oauth2_token_logs", "action = 'revoked'")
    response = server.post("/oauth2/revoke", auth=(client_id, secret), data={"token": "nope"})
    assert response.status_code == 200
    assert db.count("oauth2_token_logs", "action = 'revoked'") == before


def test_revoking_refresh_token_revokes_its_family(server, db, service, unique):
    """RFC 7009 §2.1: revoking a refresh token also invalidates its access tokens."""
    _, _, rs_id, rs_secret = service
    public_id, token = public_client_tokens(server, db, unique("erin"))
    response = server.post(
        "/oauth2/revoke",
        data={
            "token": token["refresh_token"],
            "token_type_hint": "refresh_token",
            "client_id": public_id,
        },
    )
    assert response.status_code == 200
    for value in (token["access_token"], token["refresh_token"]):
        assert server.post(
            "/oauth2/introspect", auth=(rs_id, rs_secret), data={"token": value}
        ).json() == {"active": False}


def test_refresh_token_introspection(server, db, service, unique):
    _, _, rs_id, rs_secret = service
    public_id, token = public_client_tokens(
        server, db, unique("frank"), requested="write", scope="read write"
    )
    body = server.post(
        "/oauth2/introspect", auth=(rs_id, rs_secret), data={"token": token["refresh_token"]}
    ).json()
    assert body["active"] is True and body["token_type"] == "refresh_token"
    assert body["client_id"] == public_id and body["scope"] == "write"


def test_concurrent_introspections_each_describe_their_own_token(server, db, service):
    """RFC 7662 §2.2 under load: lookups arriving together are read in one statement on
    PostgreSQL (storage/fastpath.py `Coalescer`); every answer still belongs to the token
    asked about, revoked tokens stay inactive and an unknown jti stays unknown."""
    client_id, secret, rs_id, rs_secret = service
    tokens = [server.client_credentials_token(client_id, secret) for _ in range(24)]
    revoked = set(tokens[::3])
    for token in revoked:
        response = server.post("/oauth2/revoke", auth=(client_id, secret), data={"token": token})
        assert response.status_code == 200
    # Signed by this server but without a row (the janitor removed it): unknown jti.
    unknown = tokens[1]
    with db.session() as session:
        session.execute(
            text("DELETE FROM oauth2_access_tokens WHERE jti = :j"),
            {"j": jwt.decode(unknown, options={"verify_signature": False})["jti"]},
        )
    asked = tokens * 3

    def introspect(token: str) -> tuple[str, dict]:
        response = server.post("/oauth2/introspect", auth=(rs_id, rs_secret), data={"token": token})
        assert response.status_code == 200, response.text
        return token, response.json()

    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(introspect, asked))
    for token, body in answers:
        if token in revoked or token == unknown:
            assert body == {"active": False}
        else:
            claims = jwt.decode(token, options={"verify_signature": False})
            assert body["active"] is True and body["jti"] == claims["jti"]
