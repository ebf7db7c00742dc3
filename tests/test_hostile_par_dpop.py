"""Hostile input at the pushed authorization request endpoint (RFC 9126) and in DPoP proofs
(RFC 9449), through the live server (issue #15 "Bad input"; DESIGN.md invariant 8).

Each refusal is checked for its RFC error as JSON (the authorization endpoint: an error
page, never a redirect), for no state change (no token, pushed-request or used-`jti` row)
and, where issue #15 asks, for its audit row. tests/test_dpop.py and tests/test_par.py
hold the functional cases; this module adds what an attacker would send. Four cases here
answered a 500 before: a proof whose `iat` is NaN or an integer past float's range, and
a `jwk` whose `kid` or `use` is not what RFC 7517 §4 allows (PyJWT accepts the key, the
thumbprint's JWK import did not). A pushed `request` object (JAR) was stored and silently
ignored; it is now `request_not_supported` (RFC 9101 §7).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
import requests
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

from tests.flows import REDIRECT_URI, query_of
from tests.test_dpop import Key, ath, b64
from tests.test_par import URN, pkce, push, sign_in_and_consent
from tests.test_private_key_jwt import ASSERTION_TYPE, Signer, key_client

# One server for most cases (its log is checked at the end); one with 1 s pushed requests,
# server nonces on and the shortest proof window (5 s), for expiry and nonce cases.
SHORT = {
    "OAUTH2_PUSHED_REQUEST_TTL": "1",
    "OAUTH2_DPOP_NONCE": "true",
    "OAUTH2_DPOP_PROOF_WINDOW": "5",
}
CLIENT_CREDENTIALS = {"grant_type": "client_credentials"}


@pytest.fixture
def live(module_server: Any) -> Any:
    return module_server()


@pytest.fixture
def short(module_server: Any) -> Any:
    return module_server(**SHORT)


def assert_json_error(response: Any, status: int, error: str) -> dict[str, Any]:
    """The RFC error as a JSON object: never HTML, never a traceback, never a redirect."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json"), response.headers
    assert "Traceback" not in response.text and "location" not in response.headers
    body = response.json()
    assert body["error"] == error, body
    return body


def assert_error_page(response: Any, error: str) -> None:
    """The authorization endpoint's refusal (RFC 6749 §4.1.2.1): a page, no redirect."""
    assert response.status_code == 400, response.text[:300]
    assert response.headers["content-type"].startswith("text/html")
    assert "location" not in response.headers and error in response.text


def audit_rows(db: Any, action: str, client_id: str, count: int = 1) -> list[Any]:
    """(flags, details) of `client_id`'s `action` rows, waiting up to 5 s for `count` of
    them (refusals are written in batches, OAUTH2_AUDIT_FLUSH_INTERVAL)."""
    deadline = time.monotonic() + 5
    while True:
        rows = db.rows(
            "SELECT flags, details FROM oauth2_token_logs WHERE action = :a AND client_id = :c"
            " ORDER BY id",
            a=action,
            c=client_id,
        )
        if len(rows) >= count or time.monotonic() > deadline:
            return [tuple(json.loads(v) if isinstance(v, str) else v for v in row) for row in rows]
        time.sleep(0.1)


# -- DPoP proofs at the token endpoint (RFC 9449 §4.3) -------------------------------------


def _signed(key: Key, header: dict[str, Any], claims: dict[str, Any], alg: str = "ES256") -> str:
    return jwt.encode(claims, key.private, algorithm=alg, headers=header)


def _claims(url: str) -> dict[str, Any]:
    return {"jti": secrets.token_urlsafe(12), "htm": "POST", "htu": url, "iat": int(time.time())}


def _hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 JWS made by hand (PyJWT refuses a JWK-looking secret: the attacker won't)."""
    signing_input = _unsigned({**header, "alg": "HS256"}, claims)[:-1]
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A JWS with an empty signature (as `alg: none` makes), header and claims as given."""
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."


def _hostile_proofs(url: str) -> dict[str, Callable[[], str]]:
    """name → a function making a proof for `url` that §4.3 refuses (cases not in
    test_dpop.py)."""
    key, rsa_key, okp_key = Key(), Key("PS256"), Key("EdDSA")
    parts = urlsplit(url)
    other_port = url.replace(f":{parts.port}/", f":{(parts.port or 80) % 65535 + 1}/")
    dpop = {"typ": "dpop+jwt", "jwk": key.jwk}
    now = int(time.time())
    rsa_private = RSAAlgorithm.to_jwk(rsa_key.private, as_dict=True)
    okp_private = OKPAlgorithm.to_jwk(okp_key.private, as_dict=True)
    secret = json.dumps(key.jwk).encode()  # HS256 keyed with the public key (alg confusion)
    return {
        "oversized (signed, 5000 characters)": lambda: key.proof(url, pad="x" * 5000),
        "header is not base64url": lambda: "!!!." + b64(b"{}") + ".c2ln",
        "header is not a JSON object": lambda: b64(b"[1]") + "." + b64(b"{}") + ".c2ln",
        "two proofs folded in one header": lambda: key.proof(url) + ", " + key.proof(url),
        "symmetric jwk": lambda: key.proof(url, header={"jwk": {"kty": "oct", "k": b64(secret)}}),
        "HS256 keyed with the public jwk": lambda: _hs256(dpop, _claims(url), secret),
        "alg RS256 (not offered)": lambda: _signed(
            rsa_key, {"typ": "dpop+jwt", "jwk": rsa_key.jwk}, _claims(url), "RS256"
        ),
        "alg None (capitalised)": lambda: _unsigned({**dpop, "alg": "None"}, _claims(url)),
        "private RSA jwk": lambda: rsa_key.proof(url, header={"jwk": rsa_private}),
        "private OKP jwk": lambda: okp_key.proof(url, header={"jwk": okp_private}),
        "jwk of another key type": lambda: key.proof(url, header={"jwk": rsa_key.jwk}),
        "jwk kid not a string": lambda: key.proof(url, header={"jwk": {**key.jwk, "kid": {}}}),
        "jwk use not sig or enc": lambda: key.proof(url, header={"jwk": {**key.jwk, "use": 5}}),
        "no typ": lambda: _signed(key, {"jwk": key.jwk, "typ": None}, _claims(url)),
        "typ not a string": lambda: key.proof(url, header={"typ": ["dpop+jwt"]}),
        "htu on another host": lambda: key.proof(url.replace("127.0.0.1", "localhost")),
        "htu over https": lambda: key.proof(url.replace("http://", "https://")),
        "htu on another port": lambda: key.proof(url, htu=other_port),
        "htu not a string": lambda: key.proof(url, htu=[url]),
        "htm lowercase": lambda: key.proof(url, method="post"),
        "iat NaN": lambda: key.proof(url, iat=float("nan")),
        "iat past float range": lambda: key.proof(url, iat=10**400),
        "iat a string": lambda: key.proof(url, iat=str(now)),
        "jti empty": lambda: key.proof(url, jti=""),
        "jti of 257 characters": lambda: key.proof(url, jti="j" * 257),
        "jti not a string": lambda: key.proof(url, jti=12345),
    }


CASES = list(_hostile_proofs("http://127.0.0.1:1/oauth2/token"))


def dpop_token(server: Any, client: tuple[str, str], headers: Any) -> httpx.Response:
    return httpx.post(
        server.url("/oauth2/token"), auth=client, data=CLIENT_CREDENTIALS, headers=headers
    )


@pytest.mark.parametrize("case", CASES)
def test_hostile_proof_is_invalid_dpop_proof_audited_and_changes_nothing(live, case):
    """§4.3 and §5: 400 `invalid_dpop_proof` with `WWW-Authenticate: DPoP`, a
    `dpop_proof_refused` row flagged `invalid_dpop_proof`, no token and no used jti."""
    db = live.db
    client = db.create_client(scope="read")
    proof = _hostile_proofs(live.url("/oauth2/token"))[case]()
    used = db.count("oauth2_used_jtis")
    response = dpop_token(live, client, {"DPoP": proof})
    assert_json_error(response, 400, "invalid_dpop_proof")
    assert response.headers["www-authenticate"] == 'DPoP error="invalid_dpop_proof"'
    assert response.headers["cache-control"] == "no-store"
    assert db.count("oauth2_access_tokens", "client_id = :c", c=client[0]) == 0
    assert db.count("oauth2_used_jtis") == used
    (flags, details), *_ = audit_rows(db, "dpop_proof_refused", client[0])
    assert flags == ["invalid_dpop_proof"] and details["reason"]


def test_htu_query_fragment_and_case_are_ignored(live):
    """§4.3 item 9: htu is compared ignoring query and fragment, after RFC 3986 §6.2.2–6.2.3
    normalisation (scheme and host case, the default port): such proofs are accepted."""
    client = live.db.create_client(scope="read")
    url = live.url("/oauth2/token")
    loud = url.replace("http://", "HTTP://")
    for htu in (url + "?a=1#frag", loud, url.replace("/oauth2", ":80/oauth2", 0) + "?"):
        response = dpop_token(live, client, {"DPoP": Key().proof(url, htu=htu)})
        assert response.status_code == 200, (htu, response.text)
        assert response.json()["token_type"] == "DPoP"


def test_one_proof_sent_in_parallel_issues_one_token(live):
    """§11.1: eight requests carrying one proof at the same moment: exactly one token."""
    client = live.db.create_client(scope="read")
    proof = Key().proof(live.url("/oauth2/token"))
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: dpop_token(live, client, {"DPoP": proof}), range(8)))
    assert sorted(a.status_code for a in answers) == [200] + [400] * 7
    for refused in (a for a in answers if a.status_code == 400):
        assert (
            "used before"
            in assert_json_error(refused, 400, "invalid_dpop_proof")["error_description"]
        )
    assert live.db.count("oauth2_access_tokens", "client_id = :c", c=client[0]) == 1


def test_valid_proofs_with_failed_client_authentication_record_no_jti(live):
    """§11.1 against a flood: valid self-made proofs (each a fresh key and jti) sent with a
    wrong client secret or with a `private_key_jwt` assertion signed by another key are
    `invalid_client` and add no oauth2_used_jtis row (the jti is recorded only after
    client authentication); the proof refused with a forged assertion then works with a
    genuine one."""
    db, url = live.db, live.url("/oauth2/token")
    client_id, secret = db.create_client(scope="read")
    signer = Signer()
    key_client_id = key_client(db, signer)
    used = db.count("oauth2_used_jtis")
    for _ in range(20):
        response = dpop_token(live, (client_id, secret + "x"), {"DPoP": Key().proof(url)})
        assert_json_error(response, 401, "invalid_client")
    proof = Key().proof(url)

    def with_assertion(assertion: str) -> httpx.Response:
        form = {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}
        return httpx.post(url, data={**CLIENT_CREDENTIALS, **form}, headers={"DPoP": proof})

    forged = Signer(kid=signer.kid).assertion(key_client_id, live.base_url)
    assert_json_error(with_assertion(forged), 401, "invalid_client")
    assert db.count("oauth2_used_jtis") == used
    assert (
        db.count("oauth2_access_tokens", "client_id IN (:a, :b)", a=client_id, b=key_client_id) == 0
    )
    genuine = with_assertion(signer.assertion(key_client_id, live.base_url))
    assert genuine.status_code == 200 and genuine.json()["token_type"] == "DPoP", genuine.text
    assert db.count("oauth2_used_jtis") == used + 2  # the assertion's jti and the proof's


def test_server_nonce_refusals_change_nothing(short):
    """§8: with OAUTH2_DPOP_NONCE, a proof without a nonce, with a tampered one, a nonce
    past the proof window, or a nonce that is not a string is `use_dpop_nonce` with a fresh
    `DPoP-Nonce`, audited, and neither issues a token nor spends the proof's jti."""
    db = short.db
    client = db.create_client(scope="read")
    url, key = short.url("/oauth2/token"), Key()
    first = dpop_token(short, client, {"DPoP": key.proof(url)})
    assert_json_error(first, 400, "use_dpop_nonce")
    nonce = first.headers["dpop-nonce"]
    tampered = nonce[:-2] + ("AA" if nonce[-2:] != "AA" else "BB")
    used = db.count("oauth2_used_jtis")
    for bad in (tampered, [nonce], nonce + "x"):
        response = dpop_token(short, client, {"DPoP": key.proof(url, nonce=bad)})
        assert_json_error(response, 400, "use_dpop_nonce")
        assert response.headers["www-authenticate"] == 'DPoP error="use_dpop_nonce"'
        assert response.headers["dpop-nonce"]
    time.sleep(6)  # past the 5 s window: the nonce is stale
    stale = dpop_token(short, client, {"DPoP": key.proof(url, nonce=nonce)})
    assert_json_error(stale, 400, "use_dpop_nonce")
    assert db.count("oauth2_used_jtis") == used
    assert db.count("oauth2_access_tokens", "client_id = :c", c=client[0]) == 0
    rows = audit_rows(db, "dpop_proof_refused", client[0], 5)
    assert len(rows) == 5 and all(flags == ["use_dpop_nonce"] for flags, _ in rows)
    fresh = dpop_token(short, client, {"DPoP": key.proof(url, nonce=stale.headers["dpop-nonce"])})
    assert fresh.status_code == 200, fresh.text


# -- DPoP at a protected resource: the admin API (RFC 9449 §7) -----------------------------


@pytest.fixture
def admin_dpop(live: Any, unique: Any) -> tuple[str, str, Key]:
    """(client_id, DPoP-bound admin access token, its key)."""
    client = live.db.create_client(name=unique("dpop admin"), scope="admin")
    key = Key()
    issued = dpop_token(live, client, {"DPoP": key.proof(live.url("/oauth2/token"))})
    assert issued.status_code == 200, issued.text
    return client[0], issued.json()["access_token"], key


def test_admin_api_refuses_hostile_proofs_audits_them_and_spends_nothing(live, admin_dpop):
    """§7.1: 401 `invalid_dpop_proof` with `WWW-Authenticate: DPoP error=…`, a
    `dpop_proof_refused` row naming the token's client and jti, and the proof's jti is not
    spent (the right proof still works afterwards)."""
    client_id, token, key = admin_dpop
    url = live.url("/admin/clients")
    good = key.proof(url, method="GET", ath=ath(token))
    bearer = live.client_credentials_token(*live.db.create_client(scope="admin"), scope="admin")
    cases: dict[str, tuple[str, Any]] = {
        "ath mismatch": (token, {"DPoP": key.proof(url, method="GET", ath=ath(token[:-1]))}),
        "two DPoP headers": (token, [("DPoP", good), ("DPoP", good)]),
        "htm lowercase": (token, {"DPoP": key.proof(url, method="get", ath=ath(token))}),
        "iat NaN": (
            token,
            {"DPoP": key.proof(url, method="GET", ath=ath(token), iat=float("nan"))},
        ),
        "the token endpoint's proof": (token, {"DPoP": key.proof(live.url("/oauth2/token"))}),
        "an unbound token as DPoP": (
            bearer,
            {"DPoP": key.proof(url, method="GET", ath=ath(bearer))},
        ),
    }
    used = live.db.count("oauth2_used_jtis")
    for case, (presented, headers) in cases.items():
        headers = list(headers.items()) if isinstance(headers, dict) else headers
        response = httpx.get(url, headers=[("Authorization", f"DPoP {presented}"), *headers])
        assert_json_error(response, 401, "invalid_dpop_proof")
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('DPoP error="invalid_dpop_proof"'), (case, challenge)
    assert live.db.count("oauth2_used_jtis") == used
    rows = audit_rows(live.db, "dpop_proof_refused", client_id, 5)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert len(rows) == 5 and all(flags == ["invalid_dpop_proof"] for flags, _ in rows)
    assert (
        live.db.count(
            "oauth2_token_logs",
            "action = 'dpop_proof_refused' AND client_id = :c AND token_id = :j",
            c=client_id,
            j=claims["jti"],
        )
        == 5
    )
    accepted = httpx.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": good})
    assert accepted.status_code == 200, accepted.text


# -- POST /oauth2/par (RFC 9126 §2) --------------------------------------------------------

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _par_cases(challenge: str) -> dict[str, tuple[dict[str, Any], int, str]]:
    """name → (httpx.post keyword arguments besides auth, status, error)."""
    good = {
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        "scope": "read",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    raw = httpx.QueryParams(good).__str__()
    return {
        "huge scope": ({"data": {**good, "scope": "s" * 15000}}, 400, "invalid_scope"),
        "huge redirect_uri": (
            {"data": {**good, "redirect_uri": REDIRECT_URI + "?" + "r" * 15000}},
            400,
            "invalid_request",
        ),
        "body over the limit": ({"data": {**good, "state": "s" * 20000}}, 413, "invalid_request"),
        "repeated parameter": (
            {"content": raw + "&scope=read", "headers": FORM},
            400,
            "invalid_request",
        ),
        "101 parameters": (
            {"content": raw + "".join(f"&p{i}=1" for i in range(96)), "headers": FORM},
            400,
            "invalid_request",
        ),
        "request object (JAR)": (
            {"data": {**good, "request": "eyJhbGciOiJub25lIn0.eyJzY29wZSI6ImFkbWluIn0."}},
            400,
            "request_not_supported",
        ),
        "request_uri to fetch": (
            {"data": {**good, "request_uri": "https://attacker.example/r"}},
            400,
            "invalid_request",
        ),
        "raw non-ASCII bytes": (
            {"content": raw.encode() + b"&state=\xff\xfe", "headers": FORM},
            400,
            "invalid_request",
        ),
        "percent-encoded non-UTF-8": (
            {"content": raw + "&state=%FF%FE", "headers": FORM},
            400,
            "invalid_request",
        ),
        "NUL in state": ({"data": {**good, "state": "a\x00b"}}, 400, "invalid_request"),
        "JSON body": ({"json": good}, 400, "invalid_request"),
        "multipart body": ({"data": good, "files": {"f": ("f", b"x")}}, 400, "invalid_request"),
        "no content type": ({"content": raw.encode()}, 400, "invalid_request"),
    }


PAR_CASES = list(_par_cases("x"))


@pytest.mark.parametrize("case", PAR_CASES)
def test_hostile_pushed_request_is_a_json_error_and_stores_nothing(live, case):
    """§2.3: JSON errors, never a redirect; nothing is stored for the client."""
    client_id, secret = live.db.create_client(
        grant_types=["authorization_code"], redirect_uris=[REDIRECT_URI], scope="read"
    )
    kwargs, status, error = _par_cases(pkce()[1])[case]
    response = httpx.post(live.url("/oauth2/par"), auth=(client_id, secret), timeout=30, **kwargs)
    assert_json_error(response, status, error)
    assert live.db.count("oauth2_pushed_requests", "client_id = :c", c=client_id) == 0
    assert (
        live.db.count(
            "oauth2_token_logs",
            "action = 'authorization_request_pushed' AND client_id = :c",
            c=client_id,
        )
        == 0
    )


def test_pushing_without_client_authentication_is_audited_and_stores_nothing(live, unique):
    """§2: the client authenticates as at the token endpoint; a missing or wrong credential
    is `invalid_client`, audited `client_auth_failed`; GET is 405 JSON."""
    client_id, secret = live.db.create_client(
        name=unique("par"), grant_types=["authorization_code"], redirect_uris=[REDIRECT_URI]
    )
    _, challenge = pkce()
    as_public = push(live, client_id, code_challenge=challenge)
    assert_json_error(as_public, 401, "invalid_client")
    wrong = push(live, client_id, secret + "x", code_challenge=challenge)
    assert_json_error(wrong, 401, "invalid_client")
    rows = audit_rows(live.db, "client_auth_failed", client_id, 2)
    assert len(rows) == 2 and all("client_auth_failed" in flags for flags, _ in rows)
    assert live.db.count("oauth2_pushed_requests", "client_id = :c", c=client_id) == 0
    get = httpx.get(live.url("/oauth2/par"))
    assert_json_error(get, 405, "invalid_request")
    assert get.headers["allow"] == "POST"


def test_the_query_string_of_a_push_is_not_part_of_the_request(live):
    """The endpoint reads the POST body only (RFC 9126 §2.1): a scope in the URL's query is
    not stored."""
    client_id, secret = live.db.create_client(
        grant_types=["authorization_code"], redirect_uris=[REDIRECT_URI], scope="read write"
    )
    _, challenge = pkce()
    body = {
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        "scope": "read",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    pushed = httpx.post(
        live.url("/oauth2/par?scope=write&prompt=none"), auth=(client_id, secret), data=body
    )
    assert pushed.status_code == 201, pushed.text
    (stored,) = live.db.rows(
        "SELECT parameters FROM oauth2_pushed_requests WHERE client_id = :c", c=client_id
    )
    params = stored[0] if isinstance(stored[0], dict) else json.loads(stored[0])
    assert params["scope"] == ["read"] and "prompt" not in params


# -- request_uri at the authorization endpoint (RFC 9126 §4) -------------------------------


@pytest.fixture
def pushed(live: Any, unique: Any) -> tuple[str, str, str, str]:
    """(client_id, secret, request_uri, code_verifier) of a fresh pushed request."""
    client_id, secret = live.db.create_client(
        name=unique("par app"),
        grant_types=["authorization_code"],
        redirect_uris=[REDIRECT_URI],
        scope="read write",
    )
    verifier, challenge = pkce()
    answer = push(live, client_id, secret, code_challenge=challenge, state="pushed-state")
    assert answer.status_code == 201, answer.text
    return client_id, secret, answer.json()["request_uri"], verifier


def authorize(server: Any, **params: Any) -> requests.Response:
    return requests.get(
        server.url("/oauth2/authorize"), params=params, allow_redirects=False, timeout=30
    )


def test_forged_request_uris_are_refused_audited_and_never_fetched(live, pushed):
    """A guessed URN, an overlong one, or an https URL (never fetched: nothing connects to
    the listener it names) is `invalid_request_uri`, audited; the client's real pushed
    request stays usable."""
    client_id, _, request_uri, _ = pushed
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.5)
        target = f"https://127.0.0.1:{listener.getsockname()[1]}/request"
        forged = [URN + secrets.token_urlsafe(32), URN + "a" * 300, target, request_uri + "x"]
        for value in forged:
            assert_error_page(
                authorize(live, client_id=client_id, request_uri=value), "invalid_request_uri"
            )
        with pytest.raises(TimeoutError):
            listener.accept()
    rows = audit_rows(live.db, "pushed_request_refused", client_id, len(forged))
    assert len(rows) == len(forged) and all(f == ["invalid_request_uri"] for f, _ in rows)
    assert live.db.count("oauth2_pushed_requests", "client_id = :c", c=client_id) == 1
    assert 'name="username"' in authorize(live, client_id=client_id, request_uri=request_uri).text


def test_another_clients_or_no_client_id_leaves_the_pushed_request(live, pushed):
    """§4: a request_uri presented with another client's id, without a client_id, or twice
    in one URL is refused (audited when it reached the lookup) and not spent."""
    client_id, _, request_uri, _ = pushed
    other_id, _ = live.db.create_client(public=True, redirect_uris=[REDIRECT_URI], scope="read")
    assert_error_page(
        authorize(live, client_id=other_id, request_uri=request_uri), "invalid_request_uri"
    )
    assert_error_page(authorize(live, request_uri=request_uri), "invalid_request_uri")
    twice = requests.get(
        live.url("/oauth2/authorize"),
        params=[
            ("client_id", client_id),
            ("request_uri", request_uri),
            ("request_uri", request_uri),
        ],
        allow_redirects=False,
        timeout=30,
    )
    assert_error_page(twice, "invalid_request")
    (flags, details), *_ = audit_rows(live.db, "pushed_request_refused", other_id)
    assert flags == ["invalid_request_uri"] and details["request_uri_digest"]
    assert live.db.count("oauth2_pushed_requests", "client_id = :c", c=client_id) == 1


def test_a_request_uri_taken_by_many_browsers_at_once_works_once(live, pushed):
    """§4 single use under a race: eight browsers at the same moment, one login page."""
    client_id, _, request_uri, _ = pushed
    with ThreadPoolExecutor(8) as pool:
        pages = list(
            pool.map(
                lambda _: authorize(live, client_id=client_id, request_uri=request_uri), range(8)
            )
        )
    assert sorted(p.status_code for p in pages) == [200] + [400] * 7
    assert sum('name="username"' in p.text for p in pages) == 1
    assert len(audit_rows(live.db, "pushed_request_refused", client_id, 7)) == 7


def test_front_channel_parameters_cannot_change_a_pushed_request(live, pushed, unique):
    """§4: response_type, state, code_challenge(_method) and redirect_uri added to the URL
    are ignored: the redirect carries the pushed state, and the code needs the pushed
    request's verifier."""
    client_id, secret, request_uri, verifier = pushed
    user = live.db.create_user(unique("parry"))
    _, other_challenge = pkce()
    url = live.url("/oauth2/authorize?") + str(
        httpx.QueryParams(
            client_id=client_id,
            request_uri=request_uri,
            response_type="token",
            state="attacker-state",
            code_challenge=other_challenge,
            code_challenge_method="plain",
            redirect_uri="https://attacker.example/cb",
        )
    )
    location = sign_in_and_consent(live, requests.Session(), url, user.username)
    assert location.startswith(REDIRECT_URI + "?")
    params = query_of(location)
    assert params["state"] == "pushed-state" and "access_token" not in params
    token = httpx.post(
        live.url("/oauth2/token"),
        auth=(client_id, secret),
        data={
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        },
    )
    assert token.status_code == 200, token.text


def test_an_expired_request_uri_is_refused_audited_and_removed(short, unique):
    """§2.2 expires_in: past it the request_uri is `invalid_request_uri`, audited with
    reason "expired"; the row is gone."""
    client_id, secret = short.db.create_client(
        name=unique("late"), grant_types=["authorization_code"], redirect_uris=[REDIRECT_URI]
    )
    request_uri = push(short, client_id, secret, code_challenge=pkce()[1]).json()["request_uri"]
    time.sleep(1.5)
    assert_error_page(authorize(short, client_id=client_id, request_uri=request_uri), "expired")
    (flags, details), *_ = audit_rows(short.db, "pushed_request_refused", client_id)
    assert flags == ["invalid_request_uri"] and details["reason"] == "expired"
    assert short.db.count("oauth2_pushed_requests", "client_id = :c", c=client_id) == 0


def test_the_servers_logged_no_traceback(module_server):
    """Runs last: nothing above made either server write a traceback or answer a 5xx."""
    for server in (module_server(), module_server(**SHORT)):
        log = server.log()
        assert "Traceback" not in log, log[-3000:]
        assert '" 500' not in log
