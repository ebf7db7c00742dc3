"""RFC 6749 §4.4 client credentials against the live server; RFC 9068 access tokens."""

from __future__ import annotations

import jwt
import requests
from oauthlib.oauth2 import BackendApplicationClient
from requests_oauthlib import OAuth2Session


def test_client_credentials_issues_rfc9068_jwt_verifiable_with_jwks(server, db):
    client_id, secret = db.create_client(scope="read write")
    oauth = OAuth2Session(client=BackendApplicationClient(client_id=client_id))
    token = oauth.fetch_token(
        server.url("/oauth2/token"), client_id=client_id, client_secret=secret, scope=["read"]
    )
    assert token["token_type"] == "Bearer"
    assert token["scope"] == ["read"]
    assert token["expires_in"] == 3600
    assert "refresh_token" not in token  # RFC 6749 §4.4.3

    jwks = requests.get(server.url("/oauth2/jwks"), timeout=10).json()
    header = jwt.get_unverified_header(token["access_token"])
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256"
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(
        token["access_token"],
        jwt.PyJWK(key).key,
        algorithms=["ES256"],
        audience=server.base_url,
        issuer=server.base_url,
    )
    assert claims["sub"] == client_id and claims["client_id"] == client_id
    assert claims["scope"] == "read"
    assert claims["exp"] - claims["iat"] == 3600
    assert db.count("oauth2_access_tokens", "jti = :jti", jti=claims["jti"]) == 1
    assert (
        db.count("oauth2_token_logs", "action = 'issued' AND token_id = :jti", jti=claims["jti"])
        == 1
    )


def test_token_response_is_not_cacheable(server, db):
    client_id, secret = db.create_client()
    response = server.post(
        "/oauth2/token", auth=(client_id, secret), data={"grant_type": "client_credentials"}
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    # Omitted scope means every registered scope (RFC 6749 §3.3 default).
    assert response.json()["scope"] == "read write"


def test_client_secret_post_client_authenticates_in_body(server, db):
    client_id, secret = db.create_client(token_endpoint_auth_method="client_secret_post")
    response = server.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    assert response.status_code == 200, response.text
    # The registered method is the only one accepted (check_endpoint_auth_method).
    basic = server.post(
        "/oauth2/token", auth=(client_id, secret), data={"grant_type": "client_credentials"}
    )
    assert basic.status_code == 401
    assert basic.json()["error"] == "invalid_client"


def test_concurrent_token_requests_each_store_their_row_and_audit_row(server, db):
    """Coalesced writes (storage/fastpath.py): every 200 has its access-token row and its
    `issued` audit row, each exactly once, whatever the batching."""
    from concurrent.futures import ThreadPoolExecutor

    client_id, secret = db.create_client()
    server.client_credentials_token(client_id, secret)  # warm the secret cache

    def one(_: int) -> str:
        return server.client_credentials_token(client_id, secret)

    with ThreadPoolExecutor(max_workers=16) as pool:
        tokens = list(pool.map(one, range(64)))
    jtis = {jwt.decode(t, options={"verify_signature": False})["jti"] for t in tokens}
    assert len(jtis) == 64
    stored = {
        row[0]
        for row in db.rows("SELECT jti FROM oauth2_access_tokens WHERE client_id = :c", c=client_id)
    }
    assert jtis <= stored and len(stored) == 65
    logged = [
        row[0]
        for row in db.rows(
            "SELECT token_id FROM oauth2_token_logs WHERE action = 'issued' AND client_id = :c",
            c=client_id,
        )
    ]
    assert len(logged) == 65 and jtis <= set(logged)
