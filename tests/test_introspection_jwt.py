"""JWT responses for token introspection (RFC 9701) through the live server.

The resource server asks with `Accept: application/token-introspection+jwt` (§4) and
verifies the answer with the issuer's published JWKS (PyJWT), as a real one would.
"""

from __future__ import annotations

import jwt
import pytest

MEDIA_TYPE = "application/token-introspection+jwt"


@pytest.fixture
def service(db):
    """A service with a token of its own, and a resource server with scope `introspect`."""
    client_id, secret = db.create_client(scope="read")
    rs_id, rs_secret = db.create_client(name="resource server", scope="introspect")
    return client_id, secret, rs_id, rs_secret


def verified(server, response, audience: str) -> dict:
    """The JWT response's claims once its signature verifies with the JWKS and its
    header and registered claims are those RFC 9701 §5 requires."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] == MEDIA_TYPE
    assert response.headers["cache-control"] == "no-store"
    token = response.text
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "token-introspection+jwt"  # §5, §8.1: never `at+jwt`
    assert header["alg"] == "ES256"
    keys = jwt.PyJWKSet.from_dict(server.get("/oauth2/jwks").json())
    claims = jwt.decode(  # as README's example does it
        token,
        keys[header["kid"]].key,
        algorithms=["ES256"],
        audience=audience,
        issuer=server.base_url,
    )
    assert isinstance(claims["iat"], int)
    return claims


def test_jwt_response_carries_the_rfc7662_answer(server, service):
    """RFC 9701 §5: `iss`, `aud` = the resource server, `iat`, and the RFC 7662 members
    inside `token_introspection`, equal to the plain JSON answer."""
    client_id, secret, rs_id, rs_secret = service
    token = server.client_credentials_token(client_id, secret)
    plain = server.post("/oauth2/introspect", auth=(rs_id, rs_secret), data={"token": token})
    response = server.post(
        "/oauth2/introspect",
        auth=(rs_id, rs_secret),
        data={"token": token},
        headers={"Accept": f"application/json;q=0.5, {MEDIA_TYPE}"},
    )
    claims = verified(server, response, audience=rs_id)
    answer = claims["token_introspection"]
    assert answer == plain.json()
    assert answer["active"] is True and answer["client_id"] == client_id
    assert "sub" not in claims and "exp" not in claims  # not an access token (§8.1)


def test_jwt_response_for_an_inactive_token_says_only_inactive(server, service):
    _, _, rs_id, rs_secret = service
    response = server.post(
        "/oauth2/introspect",
        auth=(rs_id, rs_secret),
        data={"token": "not-a-token"},
        headers={"Accept": MEDIA_TYPE},
    )
    assert verified(server, response, audience=rs_id)["token_introspection"] == {"active": False}


@pytest.mark.parametrize(
    "accept", [None, "application/json", f"{MEDIA_TYPE};q=0", "text/html, */*;q=0.1"]
)
def test_plain_json_unless_the_jwt_is_asked_for(server, service, accept):
    """RFC 7662 JSON stays the default, and a JWT refused with q=0 is not sent."""
    client_id, secret, rs_id, rs_secret = service
    token = server.client_credentials_token(client_id, secret)
    headers = {"Accept": accept} if accept else {}
    response = server.post(
        "/oauth2/introspect", auth=(rs_id, rs_secret), data={"token": token}, headers=headers
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["active"] is True


def test_errors_stay_json(server, service):
    """Client authentication failures are RFC 7662 §2.3 / RFC 6749 §5.2 JSON errors."""
    client_id, secret, rs_id, _ = service
    token = server.client_credentials_token(client_id, secret)
    response = server.post(
        "/oauth2/introspect",
        auth=(rs_id, "wrong secret"),
        data={"token": token},
        headers={"Accept": MEDIA_TYPE},
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_metadata_lists_the_signing_algorithm(server):
    """RFC 9701 §7: `introspection_signing_alg_values_supported`."""
    metadata = server.get("/.well-known/oauth-authorization-server").json()
    assert metadata["introspection_signing_alg_values_supported"] == ["ES256"]
