"""DPoP (RFC 9449) and PAR (RFC 9126) driven by `requests-oauth2client`, a client
library we did not write, configured from our RFC 8414 metadata (issue #15 "Tests").
"""

from __future__ import annotations

import jwt
import requests
from requests_oauth2client import DPoPToken

from tests.flows import REDIRECT_URI, decide, discovered, login, query_of

PASSWORD = "correct horse battery"
POST = "client_secret_post"  # the library's default client authentication


def test_dpop_bound_client_credentials_and_introspection(server, db):
    """The library makes the DPoP proof; our token is DPoP with `cnf.jkt`, and
    introspection (by the library, as a resource server) shows the binding."""
    client_id, secret = db.create_client(scope="read", token_endpoint_auth_method=POST)
    client = discovered(server, client_id, secret, dpop_bound_access_tokens=True)
    token = client.client_credentials(scope="read")
    assert isinstance(token, DPoPToken) and token.token_type == "DPoP"
    claims = jwt.decode(token.access_token, options={"verify_signature": False})
    assert claims["cnf"]["jkt"] == token.dpop_key.private_key.thumbprint()
    rs_id, rs_secret = db.create_client(
        name="rs", scope="introspect", token_endpoint_auth_method=POST
    )
    answer = discovered(server, rs_id, rs_secret).introspect_token(token.access_token)
    assert answer["active"] is True and answer["cnf"] == {"jkt": claims["cnf"]["jkt"]}


def test_pushed_authorization_request_code_flow(server, db, unique):
    """The library pushes the request (PAR), the browser follows `request_uri` through
    sign-in and consent, and the library redeems the code with its PKCE verifier."""
    client_id, secret = db.create_client(
        name=unique("par app"),
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI],
        scope="read",
        token_endpoint_auth_method=POST,
    )
    user = db.create_user(unique("pam"), PASSWORD)
    client = discovered(server, client_id, secret, redirect_uri=REDIRECT_URI)
    request = client.authorization_request(scope="read", nonce=None)
    pushed = client.pushed_authorization_request(request)
    assert pushed.request_uri.startswith("urn:ietf:params:oauth:request_uri:")
    browser = requests.Session()
    page = browser.get(str(pushed), allow_redirects=False, timeout=30)
    done = login(browser, server.base_url, page, user.username, PASSWORD)
    page = browser.get(server.base_url + done.headers["location"], allow_redirects=False)
    page = decide(browser, server.base_url, page)
    assert page.status_code == 302, page.text[:300]
    response = request.validate_callback(page.headers["location"])
    token = client.authorization_code(response)
    assert token.scope == "read" and token.refresh_token
    assert query_of(page.headers["location"])["iss"] == server.base_url
