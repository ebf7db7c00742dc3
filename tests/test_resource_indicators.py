"""Resource indicators (RFC 8707) through the live server, driven by `requests-oauth2client`
(a client library we did not write) where it can be: the `resource` parameter sets the
access token's `aud` (RFC 9068 §3), verified here with the server's JWKS; a refresh narrows,
never widens (§2.2); every bad resource is `invalid_target` with an audit row and no change.
"""

from __future__ import annotations

import time

import jwt
import requests

from tests.admin_helpers import admin_api, cli_json
from tests.flows import REDIRECT_URI, authorize_with_pkce, decide, discovered, login, query_of

PASSWORD = "correct horse battery"
POST = "client_secret_post"  # the library's default client authentication
REVIEWS = "https://reviews.example.com/"
BILLING = "https://billing.example.com/api"
OTHER = "https://other.example.com/"


def verified_claims(server, token: str, audience: str) -> dict:
    """The access token's claims, its ES256 signature checked with /oauth2/jwks and `aud`
    required to contain `audience` (PyJWT's RFC 7519 §4.1.3 check)."""
    key = jwt.PyJWKClient(server.url("/oauth2/jwks")).get_signing_key_from_jwt(token)
    return jwt.decode(
        token, key.key, algorithms=["ES256"], audience=audience, issuer=server.base_url
    )


def service(db, unique, resources=(REVIEWS, BILLING)) -> tuple[str, str]:
    """A confidential client_credentials client registered for `resources`."""
    client_id, secret = db.create_client(
        name=unique("svc"), scope="read", token_endpoint_auth_method=POST, resources=resources
    )
    assert secret is not None
    return client_id, secret


def app(db, unique, resources=(REVIEWS, BILLING)) -> tuple[str, str]:
    """A confidential code-flow client (refresh tokens) registered for `resources`."""
    client_id, secret = db.create_client(
        name=unique("app"),
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI],
        scope="read",
        token_endpoint_auth_method=POST,
        resources=resources,
    )
    assert secret is not None
    return client_id, secret


def token_post(server, client_id: str, secret: str, **data) -> requests.Response:
    return server.post(
        "/oauth2/token", data={"client_id": client_id, "client_secret": secret, **data}
    )


def assert_invalid_target(response: requests.Response) -> dict:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_target", body
    assert response.headers["Cache-Control"] == "no-store"
    return body


def refused_rows(db, client_id: str, wait: float = 5.0) -> list:
    """The `resource_refused` audit rows of `client_id` (written through the batch
    buffer, so polled for up to `wait` seconds)."""
    deadline = time.monotonic() + wait
    while True:
        rows = db.rows(
            "SELECT flags, details FROM oauth2_token_logs "
            "WHERE action = 'resource_refused' AND client_id = :c",
            c=client_id,
        )
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def code_flow(server, db, unique, client_id: str, **extra) -> dict[str, str]:
    """Sign a new user in and consent; the redirect's query (code, state, iss …)."""
    user = db.create_user(unique("rita"), PASSWORD)
    result = authorize_with_pkce(server.base_url, client_id, user.username, PASSWORD, **extra)
    return {"location": result.location, "result": result, **result.params}


# -- client_credentials -------------------------------------------------------------------


def test_client_credentials_resource_sets_aud(server, db, unique):
    """One resource: `aud` is that string; two: an array of both (RFC 9068 §3). Introspection
    (RFC 7662) shows the same `aud`."""
    client_id, secret = service(db, unique)
    client = discovered(server, client_id, secret)
    token = client.client_credentials(scope="read", resource=REVIEWS)
    claims = verified_claims(server, token.access_token, REVIEWS)
    assert claims["aud"] == REVIEWS
    both = client.client_credentials(scope="read", resource=[REVIEWS, BILLING])
    assert verified_claims(server, both.access_token, BILLING)["aud"] == [REVIEWS, BILLING]
    rs_id, rs_secret = db.create_client(
        name=unique("rs"), scope="introspect", token_endpoint_auth_method=POST
    )
    answer = discovered(server, rs_id, rs_secret).introspect_token(token.access_token)
    assert answer["active"] is True and answer["aud"] == REVIEWS


def test_no_resource_keeps_the_default_audience(server, db, unique):
    """Without `resource` nothing changes: `aud` is the server's audience (the issuer by
    default), on the client_credentials hot path too."""
    client_id, secret = service(db, unique)
    token = discovered(server, client_id, secret).client_credentials(scope="read")
    assert verified_claims(server, token.access_token, server.base_url)["aud"] == server.base_url


def test_unregistered_resource_is_invalid_target(server, db, unique):
    """A resource the client is not registered for: 400 `invalid_target`, no token row,
    one `resource_refused` row flagged `invalid_target`."""
    client_id, secret = service(db, unique)
    before = db.count("oauth2_access_tokens", "client_id = :c", c=client_id)
    response = token_post(
        server, client_id, secret, grant_type="client_credentials", resource=OTHER
    )
    assert_invalid_target(response)
    assert db.count("oauth2_access_tokens", "client_id = :c", c=client_id) == before
    ((flags, details),) = refused_rows(db, client_id)
    assert "invalid_target" in flags and OTHER in str(details)


def test_relative_resource_is_invalid_target(server, db, unique):
    client_id, secret = service(db, unique, resources=(REVIEWS,))
    response = token_post(
        server, client_id, secret, grant_type="client_credentials", resource="/reviews"
    )
    assert "absolute URI" in assert_invalid_target(response)["error_description"]


def test_resource_with_fragment_is_invalid_target(server, db, unique):
    """RFC 8707 §2: no fragment, even one added to a registered resource."""
    client_id, secret = service(db, unique, resources=(REVIEWS,))
    response = token_post(
        server, client_id, secret, grant_type="client_credentials", resource=REVIEWS + "#top"
    )
    assert "fragment" in assert_invalid_target(response)["error_description"]


def test_too_many_resources_are_invalid_target(server, db, unique):
    """More than 10 `resource` parameters in one request."""
    client_id, secret = service(db, unique, resources=(REVIEWS,))
    many = [f"https://r{i}.example.com/" for i in range(11)]
    response = token_post(server, client_id, secret, grant_type="client_credentials", resource=many)
    assert "at most 10" in assert_invalid_target(response)["error_description"]


def test_too_long_resource_is_invalid_target(server, db, unique):
    """A resource over 512 characters."""
    client_id, secret = service(db, unique, resources=(REVIEWS,))
    long = REVIEWS + "a" * 600
    response = token_post(server, client_id, secret, grant_type="client_credentials", resource=long)
    assert "512" in assert_invalid_target(response)["error_description"]


# -- authorization code + PKCE, refresh ---------------------------------------------------


def test_code_flow_with_resources_and_refresh_narrowing(server, db, unique):
    """The library sends both resources at the authorization endpoint and none at the token
    endpoint: `aud` is both. A refresh for one narrows `aud` to it; the next refresh may
    still ask for the other (the family keeps the grant, RFC 8707 §2.2)."""
    client_id, secret = app(db, unique)
    client = discovered(server, client_id, secret, redirect_uri=REDIRECT_URI)
    request = client.authorization_request(scope="read", nonce=None, resource=[REVIEWS, BILLING])
    user = db.create_user(unique("ann"), PASSWORD)
    browser = requests.Session()
    page = browser.get(str(request), allow_redirects=False, timeout=30)
    done = login(browser, server.base_url, page, user.username, PASSWORD)
    page = browser.get(server.base_url + done.headers["location"], allow_redirects=False)
    page = decide(browser, server.base_url, page)
    assert page.status_code == 302, page.text[:300]
    token = client.authorization_code(request.validate_callback(page.headers["location"]))
    assert verified_claims(server, token.access_token, REVIEWS)["aud"] == [REVIEWS, BILLING]
    narrow = client.refresh_token(token, resource=BILLING)
    assert verified_claims(server, narrow.access_token, BILLING)["aud"] == BILLING
    other = client.refresh_token(narrow, resource=REVIEWS)
    assert verified_claims(server, other.access_token, REVIEWS)["aud"] == REVIEWS
    full = client.refresh_token(other)
    assert verified_claims(server, full.access_token, REVIEWS)["aud"] == [REVIEWS, BILLING]


def test_pushed_request_with_resource(server, db, unique):
    """A pushed authorization request (RFC 9126) carries `resource`; the code's token has
    it as `aud`. An unregistered one is refused at /oauth2/par with JSON `invalid_target`."""
    client_id, secret = app(db, unique)
    client = discovered(server, client_id, secret, redirect_uri=REDIRECT_URI)
    bad = client.authorization_request(scope="read", nonce=None, resource=OTHER)
    response = server.post(
        "/oauth2/par", data={**bad.args, "client_id": client_id, "client_secret": secret}
    )
    assert_invalid_target(response)
    request = client.authorization_request(scope="read", nonce=None, resource=REVIEWS)
    pushed = client.pushed_authorization_request(request)
    user = db.create_user(unique("pia"), PASSWORD)
    browser = requests.Session()
    page = browser.get(str(pushed), allow_redirects=False, timeout=30)
    done = login(browser, server.base_url, page, user.username, PASSWORD)
    page = browser.get(server.base_url + done.headers["location"], allow_redirects=False)
    page = decide(browser, server.base_url, page)
    token = client.authorization_code(request.validate_callback(page.headers["location"]))
    assert verified_claims(server, token.access_token, REVIEWS)["aud"] == REVIEWS


def test_unregistered_resource_at_authorization_redirects_invalid_target(server, db, unique):
    """At the authorization endpoint an unregistered resource is an error redirect (RFC 6749
    §4.1.2.1) with `state` and `iss` (RFC 9207), audited; no code is stored."""
    client_id, _secret = app(db, unique)
    codes = db.count("oauth2_authorization_codes", "client_id = :c", c=client_id)
    params = code_flow(server, db, unique, client_id, resource=OTHER)
    assert params["error"] == "invalid_target" and params["state"]
    assert params["iss"] == server.base_url
    assert db.count("oauth2_authorization_codes", "client_id = :c", c=client_id) == codes
    assert refused_rows(db, client_id)


def test_token_request_resource_not_granted_at_authorization(server, db, unique):
    """The code granted REVIEWS; asking the token endpoint for BILLING (registered, but not
    granted) is `invalid_target` and leaves the code unused: it then works for REVIEWS."""
    client_id, secret = app(db, unique)
    params = code_flow(server, db, unique, client_id, resource=REVIEWS)
    result = params["result"]
    verifier = result.oauth._code_verifier
    data = {
        "grant_type": "authorization_code",
        "code": params["code"],
        "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier,
    }
    refused = token_post(server, client_id, secret, resource=BILLING, **data)
    assert "not granted by the authorization" in assert_invalid_target(refused)["error_description"]
    assert refused_rows(db, client_id)
    granted = token_post(server, client_id, secret, resource=REVIEWS, **data)
    assert granted.status_code == 200, granted.text
    assert verified_claims(server, granted.json()["access_token"], REVIEWS)["aud"] == REVIEWS


def test_refresh_cannot_widen_resources(server, db, unique):
    """The family was granted REVIEWS; a refresh asking for BILLING (registered for the
    client) is `invalid_target`, audited, and rotates nothing: the same refresh token then
    works."""
    client_id, secret = app(db, unique)
    client = discovered(server, client_id, secret, redirect_uri=REDIRECT_URI)
    params = code_flow(server, db, unique, client_id, resource=REVIEWS)
    result = params["result"]
    token = token_post(
        server,
        client_id,
        secret,
        grant_type="authorization_code",
        code=params["code"],
        redirect_uri=REDIRECT_URI,
        code_verifier=result.oauth._code_verifier,
    ).json()
    refresh = token["refresh_token"]
    refused = token_post(
        server,
        client_id,
        secret,
        grant_type="refresh_token",
        refresh_token=refresh,
        resource=BILLING,
    )
    assert "not granted by the refresh token" in assert_invalid_target(refused)["error_description"]
    assert refused_rows(db, client_id)
    assert (
        db.count("oauth2_refresh_tokens", "client_id = :c AND rotated_at IS NOT NULL", c=client_id)
        == 0
    )
    again = client.refresh_token(refresh, resource=REVIEWS)
    assert verified_claims(server, again.access_token, REVIEWS)["aud"] == REVIEWS


# -- registration --------------------------------------------------------------------------


def test_resources_are_registered_through_admin_api_and_cli(server, db, unique):
    """The admin API and the CLI set `resources` through one service: malformed ones are
    400 naming the field; a change is audited with its before and after."""
    admin = admin_api(server, db, unique)
    for bad in (["/relative"], [REVIEWS + "#f"], ["https://x.example/" + "a" * 600]):
        response = admin.post("/clients", {"name": unique("bad"), "resources": bad})
        assert response.status_code == 400, response.text
        assert response.json()["field"] == "resources", response.text
    created = admin.post("/clients", {"name": unique("rs client"), "resources": [REVIEWS]})
    assert created.status_code == 201, created.text
    client_id = created.json()["client_id"]
    assert created.json()["resources"] == [REVIEWS]
    shown = cli_json(db, "clients", "update", client_id, "--resource", BILLING, "--json")
    assert shown["resources"] == [BILLING]
    page = admin.get(
        "/audit", params={"target_client_id": client_id, "action": "admin_client_updated"}
    )
    (item,) = page.json()["items"]
    assert item["details"]["before"] == {"resources": [REVIEWS]}
    assert item["details"]["changes"] == {"resources": [BILLING]}
    made = cli_json(
        db, "clients", "create", "--name", unique("cli rs"), "--resource", OTHER, "--json"
    )
    assert made["resources"] == [OTHER]


def test_relative_resource_at_authorization_redirects_invalid_target(server, db, unique):
    """A malformed resource at the authorization endpoint is an `invalid_target` error
    redirect whose description is RFC 6749 §5.2 text naming the rule."""
    client_id, _ = app(db, unique)
    params = code_flow(server, db, unique, client_id, resource="/x")
    assert params["error"] == "invalid_target"
    assert "absolute URI" in query_of(params["location"])["error_description"]
