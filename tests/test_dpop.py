"""DPoP (RFC 9449) at the token endpoint, through the live server.

Proofs are made the way a client would, with PyJWT and `cryptography` keys; the key's
thumbprint is computed here from RFC 7638 §3 directly, independently of the server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tests.admin_helpers import cli_json
from tests.conftest import skip_unless_postgresql
from tests.fake_google import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE, connect_branch, exchange_client
from tests.flows import REDIRECT_URI, authorize_with_pkce, exchange_code, public_app


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Key:
    """A client's DPoP key pair and its public JWK."""

    def __init__(self, alg: str = "ES256") -> None:
        self.alg = alg
        if alg == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        elif alg == "PS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ed25519.Ed25519PrivateKey.generate()
            self.jwk = OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True)

    @property
    def thumbprint(self) -> str:
        """RFC 7638 §3: SHA-256 of the required members, sorted, no whitespace."""
        required = {
            "EC": ("crv", "kty", "x", "y"),
            "RSA": ("e", "kty", "n"),
            "OKP": ("crv", "kty", "x"),
        }
        members = {name: self.jwk[name] for name in required[self.jwk["kty"]]}
        text = json.dumps(members, sort_keys=True, separators=(",", ":"))
        return b64(hashlib.sha256(text.encode()).digest())

    def proof(self, url: str, method: str = "POST", header: dict | None = None, **claims) -> str:
        body = {"jti": str(uuid.uuid4()), "htm": method, "htu": url, "iat": int(time.time())}
        body.update(claims)
        headers = {"typ": "dpop+jwt", "jwk": self.jwk, **(header or {})}
        return jwt.encode(body, self.private, algorithm=self.alg, headers=headers)


def token_request(server, client, proof: str | None, **data) -> httpx.Response:
    client_id, secret = client
    headers = {"DPoP": proof} if proof is not None else {}
    body = {"grant_type": "client_credentials", **data}
    return httpx.post(
        server.url("/oauth2/token"), auth=(client_id, secret), data=body, headers=headers
    )


@pytest.fixture
def client(db):
    return db.create_client(scope="read")


@pytest.mark.parametrize("alg", ["ES256", "PS256", "EdDSA"])
def test_proof_binds_the_access_token_to_the_key(server, db, client, alg):
    """§5 token_type DPoP, §6.1 cnf.jkt = the key's RFC 7638 thumbprint; §6.2
    introspection shows cnf."""
    key = Key(alg)
    response = token_request(server, client, key.proof(server.url("/oauth2/token")))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "DPoP"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["cnf"] == {"jkt": key.thumbprint}
    rs_id, rs_secret = db.create_client(name="rs", scope="introspect")
    answer = httpx.post(
        server.url("/oauth2/introspect"),
        auth=(rs_id, rs_secret),
        data={"token": body["access_token"]},
    ).json()
    assert answer["active"] is True
    assert answer["cnf"] == {"jkt": key.thumbprint} and answer["token_type"] == "DPoP"


def test_without_a_proof_tokens_stay_bearer(server, client):
    body = token_request(server, client, None).json()
    assert body["token_type"] == "Bearer"
    assert "cnf" not in jwt.decode(body["access_token"], options={"verify_signature": False})


def _bad_proofs(url: str) -> dict[str, str]:
    key, other = Key(), Key()
    hs = jwt.encode(
        {"jti": "x", "htm": "POST", "htu": url, "iat": int(time.time())},
        "a shared secret of at least thirty-two bytes",
        algorithm="HS256",
        headers={"typ": "dpop+jwt", "jwk": key.jwk},
    )
    private_jwk = ECAlgorithm.to_jwk(key.private, as_dict=True)
    forged = other.proof(url, header={"jwk": key.jwk})  # signed by another key
    return {
        "wrong typ": key.proof(url, header={"typ": "JWT"}),
        "HS256": hs,
        "none": jwt.encode(
            {"jti": "y", "htm": "POST", "htu": url, "iat": int(time.time())},
            None,
            algorithm="none",
            headers={"typ": "dpop+jwt", "jwk": key.jwk},
        ),
        "private key in jwk": key.proof(url, header={"jwk": private_jwk}),
        "signed by another key": forged,
        "wrong method": key.proof(url, method="GET"),
        "wrong URL": key.proof(url.replace("/token", "/revoke")),
        "old iat": key.proof(url, iat=int(time.time()) - 3600),
        "future iat": key.proof(url, iat=int(time.time()) + 3600),
        "no jti": jwt.encode(
            {"htm": "POST", "htu": url, "iat": int(time.time())},
            key.private,
            algorithm="ES256",
            headers={"typ": "dpop+jwt", "jwk": key.jwk},
        ),
        "not a JWT": "not-a-jwt",
    }


@pytest.mark.parametrize("case", list(_bad_proofs("https://x/oauth2/token")))
def test_bad_proofs_are_refused_audited_and_issue_nothing(server, db, client, case):
    """§4.3 checks; §5: `invalid_dpop_proof`; nothing is issued; the refusal is audited."""
    proof = _bad_proofs(server.url("/oauth2/token"))[case]
    before = db.count("oauth2_access_tokens", "client_id = :c", c=client[0])
    response = token_request(server, client, proof)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_dpop_proof"
    assert response.headers["www-authenticate"] == 'DPoP error="invalid_dpop_proof"'
    assert db.count("oauth2_access_tokens", "client_id = :c", c=client[0]) == before


def test_a_proof_is_used_once_and_refusals_are_audited(server, db, client):
    """§11.1: a replayed proof (same jti) is refused."""
    proof = Key().proof(server.url("/oauth2/token"))
    assert token_request(server, client, proof).status_code == 200
    again = token_request(server, client, proof)
    assert again.status_code == 400 and "used before" in again.json()["error_description"]
    # refusals are written in batches (OAUTH2_AUDIT_FLUSH_INTERVAL)
    flags = db.rows_eventually(
        "SELECT flags FROM oauth2_token_logs WHERE action = 'dpop_proof_refused'"
        " AND client_id = :c",
        c=client[0],
    )
    assert flags and "invalid_dpop_proof" in str(flags[-1][0])


def used_jti_rows(db, key: Key, proof: str) -> int:
    """Rows of `proof` in oauth2_used_jtis: each is named by the SHA-256 (hex) of
    `dpop:<jkt>:<jti>`."""
    jti = jwt.decode(proof, options={"verify_signature": False})["jti"]
    digest = hashlib.sha256(f"dpop:{key.thumbprint}:{jti}".encode()).hexdigest()
    return db.count("oauth2_used_jtis", "jti_hash = :h", h=digest)


def unauthenticated(server, client, proof: str, how: str) -> httpx.Response:
    """A client_credentials request with `proof` whose client authentication fails."""
    client_id, secret = client
    url, headers = server.url("/oauth2/token"), {"DPoP": proof}
    body = {"grant_type": "client_credentials"}
    if how == "wrong secret":
        return httpx.post(url, auth=(client_id, secret + "x"), data=body, headers=headers)
    if how == "wrong secret in the body":
        body |= {"client_id": client_id, "client_secret": secret + "x"}
    elif how == "unknown client":
        return httpx.post(url, auth=("no-such-client", secret), data=body, headers=headers)
    return httpx.post(url, data=body, headers=headers)  # no client at all


@pytest.mark.parametrize(
    "how", ["wrong secret", "wrong secret in the body", "unknown client", "no client"]
)
def test_a_proof_is_claimed_only_once_the_client_is_authenticated(server, db, client, how):
    """§4.3 ("These checks may be performed in any order") and §11.1: a valid proof sent
    with client credentials that fail is `invalid_client` and records no jti, so an
    unauthenticated caller cannot grow oauth2_used_jtis; the same proof then works with the
    right secret (its jti was never used), and a replay of it is `invalid_dpop_proof`."""
    key = Key()
    proof = key.proof(server.url("/oauth2/token"))
    used = db.count("oauth2_used_jtis")
    refused = unauthenticated(server, client, proof, how)
    assert refused.status_code in (400, 401), refused.text
    assert refused.json()["error"] == "invalid_client"
    if how == "wrong secret":
        assert refused.status_code == 401
    assert db.count("oauth2_used_jtis") == used and used_jti_rows(db, key, proof) == 0
    assert db.count("oauth2_access_tokens", "client_id = :c", c=client[0]) == 0
    accepted = token_request(server, client, proof)
    assert accepted.status_code == 200, accepted.text
    claims = jwt.decode(accepted.json()["access_token"], options={"verify_signature": False})
    assert claims["cnf"] == {"jkt": key.thumbprint}
    replay = token_request(server, client, proof)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_dpop_proof"
    assert "used before" in replay.json()["error_description"]
    assert replay.headers["www-authenticate"] == 'DPoP error="invalid_dpop_proof"'
    assert used_jti_rows(db, key, proof) == 1
    assert db.count("oauth2_access_tokens", "client_id = :c", c=client[0]) == 1


def test_a_replay_refused_after_authentication_is_audited(server, db, client):
    """The replay check now runs after client authentication: its refusal is the same
    `dpop_proof_refused` row (flag `invalid_dpop_proof`, the client, the grant type) and
    no `client_auth_failed` row."""
    proof = Key().proof(server.url("/oauth2/token"))
    assert token_request(server, client, proof).status_code == 200
    assert token_request(server, client, proof).status_code == 400
    deadline = time.monotonic() + 5  # refusals are written in batches
    while True:
        rows = db.rows(
            "SELECT action, flags, grant_type FROM oauth2_token_logs"
            " WHERE client_id = :c AND action <> 'issued'",
            c=client[0],
        )
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [(action, grant) for action, _, grant in rows] == [
        ("dpop_proof_refused", "client_credentials")
    ]
    assert "invalid_dpop_proof" in str(rows[0][1])


def test_a_proof_is_used_once_when_a_worker_holds_an_old_secret(start_server, db):
    """§11.1 across a secret rotation: a worker whose cached client record still has the
    old secret refuses the new one up front, and the transaction accepts it against the
    row; the proof's jti is still recorded before the grant runs, so a replay with the new
    secret is `invalid_dpop_proof`. (On SQLite no notification reaches the worker: its
    cache stays behind until the row check.)"""
    live = start_server(OAUTH2_CLIENT_CACHE_TTL="600")
    client_id, old = db.create_client(scope="read")
    assert token_request(live, (client_id, old), None).status_code == 200  # cached
    new = cli_json(db, "clients", "rotate-secret", client_id)["client_secret"]
    key = Key()
    proof = key.proof(live.url("/oauth2/token"))
    first = token_request(live, (client_id, new), proof)
    assert first.status_code == 200, first.text
    replay = token_request(live, (client_id, new), proof)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_dpop_proof"
    assert first.json()["token_type"] == "DPoP" and used_jti_rows(db, key, proof) == 1


def test_two_dpop_headers_are_refused(server, client):
    key = Key()
    url = server.url("/oauth2/token")
    response = httpx.post(
        url,
        auth=client,
        data={"grant_type": "client_credentials"},
        headers=[("DPoP", key.proof(url)), ("DPoP", key.proof(url))],
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_dpop_proof"


def test_replay_is_refused_across_instances(database, db, start_instances):
    """The jti store is the deployment's: a proof used at one instance is refused at the
    other (two instances, two workers each, one PostgreSQL database)."""
    skip_unless_postgresql(database)
    first, second = start_instances()
    client = db.create_client(scope="read")
    key = Key()
    # both instances serve one issuer: the proof's htu is the issuer's token endpoint
    metadata = first.get("/.well-known/oauth-authorization-server").json()
    proof = key.proof(metadata["token_endpoint"])
    assert token_request(first, client, proof).status_code == 200
    replay = token_request(second, client, proof)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_dpop_proof"


def test_server_nonce(start_server, db):
    """§8: with OAUTH2_DPOP_NONCE the first proof gets `use_dpop_nonce` and a DPoP-Nonce;
    a proof carrying it is accepted; a made-up nonce is not."""
    live = start_server(OAUTH2_DPOP_NONCE="true")
    client = db.create_client(scope="read")
    key = Key()
    url = live.url("/oauth2/token")
    first = token_request(live, client, key.proof(url))
    assert first.status_code == 400 and first.json()["error"] == "use_dpop_nonce"
    nonce = first.headers["dpop-nonce"]
    assert token_request(live, client, key.proof(url, nonce="made-up")).status_code == 400
    second = token_request(live, client, key.proof(url, nonce=nonce))
    assert second.status_code == 200 and second.json()["token_type"] == "DPoP"


def test_metadata_lists_dpop_algorithms(server):
    metadata = server.get("/.well-known/oauth-authorization-server").json()
    assert metadata["dpop_signing_alg_values_supported"] == ["ES256", "PS256", "EdDSA"]


def test_a_client_registered_for_dpop_must_send_proofs(server, db, unique):
    """RFC 9449 §5.2 `dpop_bound_access_tokens`, set with the CLI: without a proof the token
    request is `invalid_dpop_proof` and nothing is issued; with one the token is bound."""
    created = cli_json(
        db,
        "clients",
        "create",
        "--name",
        unique("dpop only"),
        "--scope",
        "read",
        "--grant-type",
        "client_credentials",
        "--dpop-bound",
        "--json",
    )
    client = (created["client_id"], created["client_secret"])
    shown = cli_json(db, "clients", "show", client[0], "--json")
    assert shown["dpop_bound_access_tokens"] is True
    refused = token_request(server, client, None)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_dpop_proof"
    assert db.count("oauth2_access_tokens", "client_id = :c", c=client[0]) == 0
    bound = token_request(server, client, Key().proof(server.url("/oauth2/token")))
    assert bound.status_code == 200 and bound.json()["token_type"] == "DPoP"
    cli_json(db, "clients", "update", client[0], "--no-dpop-bound", "--json")
    assert token_request(server, client, None).json()["token_type"] == "Bearer"


def refresh(server, client_id: str, refresh_token: str, proof: str | None) -> httpx.Response:
    headers = {"DPoP": proof} if proof is not None else {}
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    return httpx.post(server.url("/oauth2/token"), data=data, headers=headers)


def test_a_public_clients_refresh_token_is_bound_to_its_key(server, db, unique):
    """§5: a public client's refresh token, issued with a proof, refreshes only with a proof
    of the same key; a missing proof or another key is `invalid_grant`, audited, and
    rotates nothing (the token still works with the right key afterwards)."""
    client_id = public_app(db, unique)
    user = db.create_user(unique("dora"), "correct horse battery")
    result = authorize_with_pkce(server.base_url, client_id, user.username, "correct horse battery")
    key = Key()
    url = server.url("/oauth2/token")
    tokens = exchange_code(server.base_url, result, headers={"DPoP": key.proof(url)})
    assert tokens["token_type"] == "DPoP"
    first = tokens["refresh_token"]
    for proof in (None, Key().proof(url)):
        refused = refresh(server, client_id, first, proof)
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    renewed = refresh(server, client_id, first, key.proof(url))
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["token_type"] == "DPoP"
    second = renewed.json()["refresh_token"]
    assert refresh(server, client_id, second, None).status_code == 400  # still bound
    assert refresh(server, client_id, second, key.proof(url)).status_code == 200
    time.sleep(1.5)  # refusals are written in batches
    flags = db.rows(
        "SELECT flags FROM oauth2_token_logs WHERE action = 'refresh_refused' AND client_id = :c",
        c=client_id,
    )
    assert len(flags) == 3 and all("dpop_key_mismatch" in str(row[0]) for row in flags)


def test_a_confidential_clients_refresh_token_is_not_bound(server, db, unique):
    """§5: only public clients' refresh tokens are bound; a confidential client proves
    itself by authenticating, so it may refresh without a proof (and gets Bearer)."""
    client_id, secret = db.create_client(
        name=unique("web app"),
        grant_types=["authorization_code", "refresh_token"],
        redirect_uris=[REDIRECT_URI],
        scope="read",
    )
    user = db.create_user(unique("cora"), "correct horse battery")
    result = authorize_with_pkce(server.base_url, client_id, user.username, "correct horse battery")
    url = server.url("/oauth2/token")
    tokens = exchange_code(server.base_url, result, secret, headers={"DPoP": Key().proof(url)})
    assert tokens["token_type"] == "DPoP"
    renewed = httpx.post(
        url,
        auth=(client_id, secret),
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
    )
    assert renewed.status_code == 200 and renewed.json()["token_type"] == "Bearer"


def ath(token: str) -> str:
    return b64(hashlib.sha256(token.encode()).digest())


def test_admin_api_takes_a_dpop_bound_token_only_with_a_proof_of_its_key(server, db, unique):
    """§7.1: the admin API (a protected resource of this server) accepts a DPoP-bound
    admin token as `Authorization: DPoP` with a proof for the request (`htm`, `htu`,
    `ath`, the token's key, used once); as a bearer token it is `invalid_token`."""
    admin_id, secret = db.create_client(name=unique("dpop admin"), scope="admin")
    key = Key()
    issued = token_request(server, (admin_id, secret), key.proof(server.url("/oauth2/token")))
    token = issued.json()["access_token"]
    url = server.url("/admin/clients")

    def call(scheme: str, proof: str | None) -> httpx.Response:
        headers = {"Authorization": f"{scheme} {token}"}
        if proof is not None:
            headers["DPoP"] = proof
        return httpx.get(url, headers=headers)

    as_bearer = call("Bearer", None)
    assert as_bearer.status_code == 401 and as_bearer.json()["error"] == "invalid_token"
    good = key.proof(url, method="GET", ath=ath(token))
    assert call("DPoP", good).status_code == 200
    assert call("DPoP", good).status_code == 401  # replayed
    refused = {
        "no proof": None,
        "no ath": key.proof(url, method="GET"),
        "ath of another token": key.proof(url, method="GET", ath=ath(token + "x")),
        "another key": Key().proof(url, method="GET", ath=ath(token)),
        "another URL": key.proof(server.url("/admin/users"), method="GET", ath=ath(token)),
    }
    for case, proof in refused.items():
        response = call("DPoP", proof)
        assert response.status_code == 401, case
        assert response.json()["error"] == "invalid_dpop_proof", case
        assert response.headers["www-authenticate"].startswith("DPoP "), case


def test_token_exchange_takes_a_dpop_bound_subject_token_with_a_proof_of_its_key(
    upstream, db, google, unique
):
    """RFC 8693 with a DPoP-bound subject token (RFC 9449 §6.1): the exchange works when the
    request proves the token's key, and is `invalid_request` without a proof or with
    another key (the stored upstream grant is used only in the first case)."""
    branch_id = unique("branch")
    connect_branch(upstream, db, google, branch_id)
    client_id, secret = exchange_client(db, [branch_id])
    key = Key()
    token_url = upstream.url("/oauth2/token")
    issued = token_request(
        upstream, (client_id, secret), key.proof(token_url), scope="upstream:google read"
    )
    subject = issued.json()["access_token"]
    assert "cnf" in jwt.decode(subject, options={"verify_signature": False})
    body = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "audience": "google",
        "branch_id": branch_id,
    }

    def exchange_with(proof: str | None) -> httpx.Response:
        headers = {"DPoP": proof} if proof is not None else {}
        return httpx.post(token_url, auth=(client_id, secret), data=body, headers=headers)

    for proof in (None, Key().proof(token_url)):
        refused = exchange_with(proof)
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_request"
        assert "DPoP" in refused.json()["error_description"]
    proof = key.proof(token_url)
    answered = exchange_with(proof)
    assert answered.status_code == 200, answered.text
    assert answered.json()["access_token"] == google.issued_access_tokens[-1]
    replay = exchange_with(proof)  # §11.1: claimed once client authentication succeeded
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_dpop_proof"


def test_token_exchange_claims_a_proof_once_when_it_refreshes_upstream(
    upstream, db, google, unique
):
    """§11.1 with RFC 8693: an exchange whose stored upstream token is near its end runs the
    grant twice around the upstream refresh; the proof's jti is recorded once (the exchange
    answers 200, one refresh at Google), and a replay with the right secret is
    `invalid_dpop_proof`, issuing nothing."""
    branch_id = unique("stale")
    connect_branch(upstream, db, google, branch_id, expires_in=120)
    client_id, secret = exchange_client(db, [branch_id])
    key = Key()
    token_url = upstream.url("/oauth2/token")
    issued = token_request(
        upstream, (client_id, secret), key.proof(token_url), scope="upstream:google read"
    )
    body = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": issued.json()["access_token"],
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "audience": "google",
        "branch_id": branch_id,
    }
    proof = key.proof(token_url)
    refreshes = google.refresh_calls
    answered = httpx.post(token_url, auth=(client_id, secret), data=body, headers={"DPoP": proof})
    assert answered.status_code == 200, answered.text
    assert google.refresh_calls == refreshes + 1
    replay = httpx.post(token_url, auth=(client_id, secret), data=body, headers={"DPoP": proof})
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_dpop_proof"
    assert used_jti_rows(db, key, proof) == 1
