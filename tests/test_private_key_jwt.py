"""`private_key_jwt` client authentication (RFC 7523 §2.2 and §3, RFC 7521 §4.2) through
the live server: at the token, introspection, revocation and PAR endpoints, driven by
`requests-oauth2client` (a client we did not write) and by hand-made assertions (PyJWT,
`cryptography` keys) for each rule; keys registered inline (`jwks`) or fetched from a
loopback stand-in (`jwks_uri`); registration refusals through the admin API and the CLI.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from requests_oauth2client import OAuth2Client, PrivateKeyJwt

from tests.admin_helpers import admin_api, run_cli
from tests.conftest import skip_unless_postgresql

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class Signer:
    """A client's key pair: `jwk` is the public JWK (with `kid`), `private_jwk` the
    private one (for requests-oauth2client)."""

    def __init__(self, alg: str = "ES256", kid: str | None = None) -> None:
        self.alg, self.kid = alg, kid or uuid.uuid4().hex[:12]
        if alg == "ES256":
            self.private: Any = ec.generate_private_key(ec.SECP256R1())
            to_jwk: Any = ECAlgorithm.to_jwk
        elif alg == "PS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            to_jwk = RSAAlgorithm.to_jwk
        else:
            self.private = ed25519.Ed25519PrivateKey.generate()
            to_jwk = OKPAlgorithm.to_jwk
        self.jwk = {**to_jwk(self.private.public_key(), as_dict=True), "kid": self.kid}
        self.private_jwk = {**to_jwk(self.private, as_dict=True), "kid": self.kid, "alg": alg}

    def assertion(self, client_id: str, aud: Any, header: dict | None = None, **claims) -> str:
        now = int(time.time())
        body = {"iss": client_id, "sub": client_id, "aud": aud, "iat": now, "exp": now + 60}
        body["jti"] = str(uuid.uuid4())
        body.update(claims)
        body = {name: value for name, value in body.items() if value is not None}
        headers = {"kid": self.kid, **(header or {})}
        return jwt.encode(body, self.private, algorithm=self.alg, headers=headers)


def key_client(db, *signers: Signer, **kwargs) -> str:
    """A client_credentials client registered for private_key_jwt with these keys."""
    kwargs.setdefault("scope", "read")
    if "jwks_uri" not in kwargs:
        kwargs["jwks"] = {"keys": [signer.jwk for signer in signers]}
    client_id, secret = db.create_client(token_endpoint_auth_method="private_key_jwt", **kwargs)
    assert secret is None
    return client_id


def post(server, path: str, client_id: str | None, assertion: str, **data) -> httpx.Response:
    form = {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion, **data}
    if client_id is not None:
        form["client_id"] = client_id
    return httpx.post(server.url(path), data=form, timeout=30)


def token(server, client_id: str | None, assertion: str) -> httpx.Response:
    return post(server, "/oauth2/token", client_id, assertion, grant_type="client_credentials")


def assert_invalid_client(response: httpx.Response, words: str = "") -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert words in response.json()["error_description"], response.json()


def refused_row(db, client_id: str, timeout: float = 10) -> dict:
    """The `client_auth_failed` audit row of `client_id` (written in batches)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = db.rows(
            "SELECT flags, details FROM oauth2_token_logs WHERE action = 'client_auth_failed'"
            " AND client_id = :c",
            c=client_id,
        )
        if rows:
            flags, details = rows[-1]
            flags = json.loads(flags) if isinstance(flags, str) else flags
            details = json.loads(details) if isinstance(details, str) else details
            return {"flags": flags, "details": details}
        time.sleep(0.2)
    raise AssertionError(f"no client_auth_failed row for {client_id}")


def tokens_of(db, client_id: str) -> int:
    return db.count("oauth2_access_tokens", "client_id = :c", c=client_id)


# -- a client we did not write ---------------------------------------------------------


def test_requests_oauth2client_token_introspection_and_revocation(server, db):
    """requests-oauth2client signs the assertions (aud: our issuer, RFC 7523bis) at the
    token, introspection and revocation endpoints, found through our RFC 8414 metadata."""
    signer = Signer("ES256")
    client_id = key_client(db, signer, scope="read introspect")
    auth = PrivateKeyJwt(client_id, signer.private_jwk, alg="ES256", aud=server.base_url)
    client = OAuth2Client.from_discovery_endpoint(
        server.url("/.well-known/oauth-authorization-server"),
        issuer=server.base_url,
        auth=auth,
        testing=True,
    )
    access = client.client_credentials(scope="read")
    assert jwt.decode(access.access_token, options={"verify_signature": False})["client_id"] == (
        client_id
    )
    assert client.introspect_token(access.access_token)["active"] is True
    assert client.revoke_access_token(access.access_token) is True
    assert client.introspect_token(access.access_token)["active"] is False


@pytest.mark.parametrize("alg", ["ES256", "PS256", "EdDSA"])
def test_each_accepted_algorithm_authenticates(server, db, alg):
    signer = Signer(alg)
    client_id = key_client(db, signer)
    response = token(server, client_id, signer.assertion(client_id, server.base_url))
    assert response.status_code == 200, response.text
    # client_id in the form is optional (RFC 7521 §4.2): the assertion's sub names the client
    assert token(server, None, signer.assertion(client_id, server.base_url)).status_code == 200


def test_pushed_authorization_request_authenticates_with_an_assertion(server, db, unique):
    signer = Signer()
    client_id = key_client(
        db,
        signer,
        name=unique("par key app"),
        grant_types=["authorization_code"],
        redirect_uris=["https://app.example/cb"],
    )
    response = post(
        server,
        "/oauth2/par",
        client_id,
        signer.assertion(client_id, server.base_url),
        response_type="code",
        redirect_uri="https://app.example/cb",
        scope="read",
        code_challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        code_challenge_method="S256",
    )
    assert response.status_code == 201, response.text


def test_metadata_lists_private_key_jwt_and_its_algorithms(server):
    metadata = server.get("/.well-known/oauth-authorization-server").json()
    for endpoint in ("token", "introspection", "revocation"):
        assert "private_key_jwt" in metadata[f"{endpoint}_endpoint_auth_methods_supported"]
        assert metadata[f"{endpoint}_endpoint_auth_signing_alg_values_supported"] == [
            "ES256",
            "PS256",
            "EdDSA",
        ]


# -- bad assertions: invalid_client, audited, nothing issued ----------------------------


def _refused(server, db, client_id: str, assertion: str, words: str) -> None:
    before = tokens_of(db, client_id)
    assert_invalid_client(token(server, client_id, assertion), words)
    assert tokens_of(db, client_id) == before
    row = refused_row(db, client_id)
    assert "client_auth_failed" in row["flags"] and row["details"]["method"] == "private_key_jwt"


def test_an_expired_assertion_is_refused(server, db):
    signer = Signer()
    client_id = key_client(db, signer)
    past = int(time.time()) - 120
    assertion = signer.assertion(client_id, server.base_url, exp=past, iat=past - 60)
    _refused(server, db, client_id, assertion, "expired")


def test_an_assertion_without_exp_is_refused(server, db):
    signer = Signer()
    client_id = key_client(db, signer)
    _refused(server, db, client_id, signer.assertion(client_id, server.base_url, exp=None), "")


def test_an_exp_further_ahead_than_the_max_age_is_refused(server, db):
    """OAUTH2_CLIENT_ASSERTION_MAX_AGE (default 300 s) bounds how long its jti is kept."""
    signer = Signer()
    client_id = key_client(db, signer)
    far = int(time.time()) + 300 + 120
    assertion = signer.assertion(client_id, server.base_url, exp=far)
    _refused(server, db, client_id, assertion, "ahead")


@pytest.mark.parametrize(
    "claims",
    [{"exp": 10**400}, {"iat": 10**400}, {"nbf": 10**400}, {"exp": "soon"}, {"exp": True}],
    ids=["exp-past-float", "iat-past-float", "nbf-past-float", "exp-string", "exp-bool"],
)
def test_a_time_claim_that_is_not_a_finite_number_is_refused(server, db, claims):
    """RFC 7519 §2 NumericDate: a value JSON can carry but no clock can hold (an integer
    past float's range, a string, a boolean) is invalid_client, never a 500."""
    signer = Signer()
    client_id = key_client(db, signer)
    _refused(server, db, client_id, signer.assertion(client_id, server.base_url, **claims), "")


def test_a_replayed_assertion_is_refused(server, db):
    """RFC 7523 §3 item 7: the jti works once."""
    signer = Signer()
    client_id = key_client(db, signer)
    assertion = signer.assertion(client_id, server.base_url)
    assert token(server, client_id, assertion).status_code == 200
    _refused(server, db, client_id, assertion, "used before")


def test_a_replay_is_refused_across_instances(database, db, start_instances):
    """The jti store is the deployment's: an assertion used at one instance is refused at
    the other (two instances, two workers each, one PostgreSQL database)."""
    skip_unless_postgresql(database)
    first, second = start_instances()
    issuer = first.get("/.well-known/oauth-authorization-server").json()["issuer"]
    signer = Signer()
    client_id = key_client(db, signer)
    assertion = signer.assertion(client_id, issuer)
    assert token(first, client_id, assertion).status_code == 200
    assert_invalid_client(token(second, client_id, assertion), "used before")
    assert tokens_of(db, client_id) == 1


def test_a_wrong_signature_is_refused(server, db):
    signer = Signer()
    client_id = key_client(db, signer)
    impostor = Signer(kid=signer.kid)  # another key under the registered kid
    _refused(server, db, client_id, impostor.assertion(client_id, server.base_url), "verify")


def test_an_unknown_kid_is_refused(server, db):
    client_id = key_client(db, Signer())
    stranger = Signer()
    _refused(server, db, client_id, stranger.assertion(client_id, server.base_url), "kid")


def test_alg_none_is_refused(server, db):
    signer = Signer()
    client_id = key_client(db, signer)
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": server.base_url, "exp": now + 60}
    unsigned = jwt.encode({**claims, "jti": "n1"}, None, algorithm="none")
    assertion = unsigned + "sig"  # a JWS with no signature is not even well formed
    _refused(server, db, client_id, assertion, "alg must be one of")


def test_hs256_signed_with_the_public_key_is_refused(server, db):
    """The classic key confusion: HMAC keyed with the registered public key's bytes."""
    signer = Signer("PS256")
    client_id = key_client(db, signer)
    public_pem = signer.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": server.base_url, "exp": now + 60}
    for secret in (public_pem, json.dumps(signer.jwk).encode()):
        forged = _hmac_jwt({**claims, "jti": str(uuid.uuid4())}, secret, signer.kid)
        _refused(server, db, client_id, forged, "alg must be one of")


def _hmac_jwt(claims: dict, secret: bytes, kid: str) -> str:
    """An HS256 JWS keyed with `secret`, built here because PyJWT refuses to HMAC with
    a PEM public key (the very confusion this test plays)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


@pytest.mark.parametrize(
    "aud", ["token_endpoint", "https://other.example", ["issuer", "https://other.example"]]
)
def test_an_audience_other_than_the_issuer_is_refused(server, db, aud):
    """RFC 7523bis: the issuer identifier only; the token endpoint URL is refused too."""
    signer = Signer()
    client_id = key_client(db, signer)
    issuer = server.base_url
    wanted = (
        {"token_endpoint": issuer + "/oauth2/token"}.get(aud, aud)
        if isinstance(aud, str)
        else [issuer if a == "issuer" else a for a in aud]
    )
    _refused(server, db, client_id, signer.assertion(client_id, wanted), "aud")


def test_the_issuer_as_a_one_element_array_is_accepted(server, db):
    signer = Signer()
    client_id = key_client(db, signer)
    assert (
        token(server, client_id, signer.assertion(client_id, [server.base_url])).status_code == 200
    )


def test_iss_other_than_sub_is_refused(server, db):
    signer = Signer()
    client_id = key_client(db, signer)
    assertion = signer.assertion(client_id, server.base_url, iss="someone-else")
    _refused(server, db, client_id, assertion, "iss and sub")


def test_a_future_iat_is_refused(server, db):
    signer = Signer()
    client_id = key_client(db, signer)
    assertion = signer.assertion(client_id, server.base_url, iat=int(time.time()) + 120)
    _refused(server, db, client_id, assertion, "future")


def test_a_secret_client_cannot_authenticate_with_an_assertion(server, db):
    signer = Signer()
    client_id, secret = db.create_client(scope="read")
    assert secret is not None
    _refused(server, db, client_id, signer.assertion(client_id, server.base_url), "")


def test_a_key_client_cannot_authenticate_with_a_secret_or_its_id_alone(server, db):
    client_id = key_client(db, Signer())
    url = server.url("/oauth2/token")
    for data in ({"client_id": client_id, "client_secret": "guess"}, {"client_id": client_id}):
        response = httpx.post(url, data={"grant_type": "client_credentials", **data})
        assert response.json()["error"] == "invalid_client", response.text
    assert tokens_of(db, client_id) == 0


def test_an_assertion_with_a_secret_is_two_methods(server, db):
    signer = Signer()
    client_id = key_client(db, signer)
    assertion = signer.assertion(client_id, server.base_url)
    response = httpx.post(
        server.url("/oauth2/token"),
        auth=(client_id, "x"),
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_a_client_id_other_than_the_assertions_sub_is_refused(server, db):
    signer = Signer()
    client_id = key_client(db, signer)
    other = key_client(db, signer)
    response = token(server, other, signer.assertion(client_id, server.base_url))
    assert response.json()["error"] == "invalid_client"


# -- jwks_uri: a loopback stand-in -------------------------------------------------------


class KeyHost:
    """A JWK Set server on 127.0.0.1: `serve(path, body, delay)`; `hits[path]` counts."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, float]] = {}
        self.hits: Counter[str] = Counter()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                host.hits[self.path] += 1
                body, delay = host.routes.get(self.path, (b"", 0.0))
                time.sleep(delay)
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                with contextlib.suppress(OSError):  # the server gave up waiting
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def serve(self, path: str, keys: list[dict] | bytes, delay: float = 0.0) -> str:
        body = keys if isinstance(keys, bytes) else json.dumps({"keys": keys}).encode()
        self.routes[path] = (body, delay)
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture(scope="module")
def key_host():
    host = KeyHost()
    yield host
    host.httpd.shutdown()


def test_jwks_uri_keys_are_fetched_once_and_cached(server, db, key_host, unique):
    signer = Signer()
    path = "/" + unique("jwks")
    client_id = key_client(db, jwks_uri=key_host.serve(path, [signer.jwk]))
    for _ in range(3):
        assert (
            token(server, client_id, signer.assertion(client_id, server.base_url)).status_code
            == 200
        )
    assert key_host.hits[path] == 1


def test_an_unknown_kid_refetches_the_jwks_uri_once(server, db, key_host, unique):
    """Key rotation at the client: a new kid is fetched; another unknown kid right after
    does not fetch again (at most once a minute per URI)."""
    old, new = Signer(), Signer()
    path = "/" + unique("jwks")
    client_id = key_client(db, jwks_uri=key_host.serve(path, [old.jwk]))
    assert token(server, client_id, old.assertion(client_id, server.base_url)).status_code == 200
    key_host.serve(path, [old.jwk, new.jwk])
    assert token(server, client_id, new.assertion(client_id, server.base_url)).status_code == 200
    assert key_host.hits[path] == 2
    assert_invalid_client(token(server, client_id, Signer().assertion(client_id, server.base_url)))
    assert key_host.hits[path] == 2


def test_a_jwks_uri_answer_over_the_size_limit_is_refused(server, db, key_host, unique):
    signer = Signer()
    path = "/" + unique("jwks")
    padding = {"keys": [signer.jwk], "padding": "x" * 70_000}
    uri = key_host.serve(path, json.dumps(padding).encode())
    client_id = key_client(db, jwks_uri=uri)
    _refused(server, db, client_id, signer.assertion(client_id, server.base_url), "bytes")


def test_a_slow_jwks_uri_times_out(server, db, key_host, unique):
    signer = Signer()
    path = "/" + unique("jwks")
    client_id = key_client(db, jwks_uri=key_host.serve(path, [signer.jwk], delay=6))
    started = time.monotonic()
    _refused(server, db, client_id, signer.assertion(client_id, server.base_url), "in time")
    assert time.monotonic() - started < 5.5
    # the failure is remembered: a flood does not turn into a flood of fetches
    assert_invalid_client(token(server, client_id, signer.assertion(client_id, server.base_url)))
    assert key_host.hits[path] == 1


# -- registration: admin API and CLI (one registry) ----------------------------------------


def _bad_registrations(signer: Signer) -> dict[str, dict]:
    private = {**signer.private_jwk}
    return {
        "private key (d)": {"jwks": {"keys": [private]}},
        "oct key": {"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}},
        "rsa private members": {"jwks": {"keys": [{**signer.jwk, "p": "AQAB"}]}},
        "no keys": {"jwks": {"keys": []}},
        "http uri": {"jwks_uri": "http://keys.example/jwks.json"},
        "not a url": {"jwks_uri": "keys"},
        "fragment": {"jwks_uri": "https://keys.example/jwks.json#x"},
        "both": {"jwks": {"keys": [signer.jwk]}, "jwks_uri": "https://keys.example/j"},
        "neither": {},
    }


@pytest.mark.parametrize("case", list(_bad_registrations(Signer())))
def test_the_admin_api_refuses_bad_keys(server, db, unique, case):
    api = admin_api(server, db, unique)
    body = {
        "name": unique("bad keys"),
        "token_endpoint_auth_method": "private_key_jwt",
        **_bad_registrations(Signer())[case],
    }
    response = api.post("/clients", body)
    assert response.status_code == 400, response.text
    assert db.count("oauth2_clients", "name = :n", n=body["name"]) == 0


def test_the_admin_api_registers_and_updates_keys_with_before_and_after(server, db, unique):
    api = admin_api(server, db, unique)
    first, second = Signer(), Signer()
    created = api.post(
        "/clients",
        {
            "name": unique("key app"),
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": {"keys": [first.jwk]},
        },
    )
    assert created.status_code == 201, created.text
    client = created.json()
    assert "client_secret" not in client and client["jwks"] == {"keys": [first.jwk]}
    client_id = client["client_id"]
    assert token(server, client_id, first.assertion(client_id, server.base_url)).status_code == 200
    secret_client = api.post("/clients", {"name": unique("s"), "jwks": {"keys": [first.jwk]}})
    assert secret_client.status_code == 400  # keys only for private_key_jwt clients
    assert api.post(f"/clients/{client_id}/secret").status_code == 400
    updated = api.patch(f"/clients/{client_id}", {"jwks": {"keys": [second.jwk]}})
    assert updated.status_code == 200, updated.text
    assert_invalid_client(token(server, client_id, first.assertion(client_id, server.base_url)))
    assert token(server, client_id, second.assertion(client_id, server.base_url)).status_code == 200
    row = db.rows(
        "SELECT details FROM oauth2_token_logs WHERE action = 'admin_client_updated'"
        " AND client_id = :a ORDER BY id DESC",
        a=api.client_id,
    )[0][0]
    details = json.loads(row) if isinstance(row, str) else row
    assert details["before"]["jwks"] == {"keys": [first.jwk]}
    assert details["changes"]["jwks"] == {"keys": [second.jwk]}


def test_the_cli_registers_a_key_client_and_refuses_bad_keys(server, db, unique, tmp_path):
    signer = Signer("EdDSA")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [signer.jwk]}))
    name = unique("cli key app")
    result = run_cli(
        db,
        "clients", "create", "--name", name, "--auth-method", "private_key_jwt",
        "--jwks", f"@{path}", "--scope", "read", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert created["client_secret"] is None
    client_id = created["client_id"]
    assert token(server, client_id, signer.assertion(client_id, server.base_url)).status_code == 200
    for bad in _bad_registrations(signer).values():
        args = ["clients", "create", "--name", unique("bad"), "--auth-method", "private_key_jwt"]
        if "jwks" in bad:
            args += ["--jwks", json.dumps(bad["jwks"])]
        if "jwks_uri" in bad:
            args += ["--jwks-uri", bad["jwks_uri"]]
        refused = run_cli(db, *args)
        assert refused.returncode != 0 and ("jwks" in refused.stderr), refused.stderr
    updated = run_cli(db, "clients", "update", client_id, "--jwks-uri", "ftp://keys.example/j")
    assert updated.returncode != 0 and "jwks_uri" in updated.stderr
