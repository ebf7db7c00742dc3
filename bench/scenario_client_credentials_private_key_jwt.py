"""Benchmark scenario `client_credentials_private_key_jwt`: the client_credentials grant
for a client that authenticates with `private_key_jwt` (RFC 7523 §2.2): a signed client
assertion instead of a secret on every request.

The scenario registers its own client (token_endpoint_auth_method `private_key_jwt`, an
inline JWK Set with one ES256 key). wrk cannot sign, so just before the run it makes N
assertions (`iss` = `sub` = the client, `aud` = the issuer, a fresh `jti`, `iat` = now,
`exp` = now + 240 s: within `OAUTH2_CLIENT_ASSERTION_MAX_AGE`'s default 300), writes them
to a requests file (bench/load.py `run_wrk`: one body per request, each sent once) and
warms the server up with 50 more. N is sized as for `client_credentials_dpop` (run
seconds × the plain client_credentials rate of the same run, else `BENCH_SIGNED_RATE`,
× 1.5 + 64); a run past N replays assertions (401, counted as errors; EXHAUSTED).

Each request costs the server: parsing and verifying the ES256 assertion against the
client's registered key, and recording its `jti` (`oauth2_used_jtis`) besides the token's
row and audit row; no secret hash is compared.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from sqlalchemy.orm import Session

from bench.scenario_client_credentials_dpop import (
    WARM_UP,
    b64url,
    es256_jws,
    proof_count,
    write_requests,
)
from oauth2_server.storage.clients import create_client

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
LIFETIME = 240  # seconds an assertion is valid (OAUTH2_CLIENT_ASSERTION_MAX_AGE: 300)
KID = "bench-es256"


def register_client(engine: Any) -> tuple[str, ec.EllipticCurvePrivateKey]:
    """A client_credentials client with one registered ES256 public key; (client_id, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": KID, "alg": "ES256"}
    with Session(engine) as session, session.begin():
        record, _ = create_client(
            session,
            name="bench private_key_jwt",
            grant_types=["client_credentials"],
            redirect_uris=[],
            scope="read",
            token_endpoint_auth_method="private_key_jwt",
            jwks={"keys": [jwk]},
        )
    return record.client_id, key


def assertion_bodies(client_id: str, key: Any, issuer: str, count: int) -> list[str]:
    """`count` token request bodies, each with its own client assertion (RFC 7523 §3)."""
    header = b64url(json.dumps({"alg": "ES256", "typ": "JWT", "kid": KID}).encode())
    now = int(time.time())
    bodies = []
    for _ in range(count):
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": issuer,
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "exp": now + LIFETIME,
        }
        bodies.append(
            urlencode(
                {
                    "grant_type": "client_credentials",
                    "scope": "read",
                    "client_assertion_type": ASSERTION_TYPE,
                    "client_assertion": es256_jws(key, header, claims),
                }
            )
        )
    return bodies


def client_credentials_private_key_jwt(ctx: Any) -> tuple[str, str, str, Path]:
    """bench/load.py scenario: (path, body, Authorization, requests file) from a
    BenchContext; no Authorization header, the assertion is in each body."""
    if ctx.seconds + 10 > LIFETIME:
        print(f"  warning: a {ctx.seconds} s run outlives the assertions ({LIFETIME} s)")
    client_id, key = register_client(ctx.sync_engine)
    issuer = ctx.env.get("OAUTH2_ISSUER", ctx.base_url)
    count = proof_count(ctx.seconds, ctx.rate_hint)
    started = time.monotonic()
    bodies = assertion_bodies(client_id, key, issuer, count + WARM_UP)
    token_url = ctx.base_url + "/oauth2/token"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for body in bodies[:WARM_UP]:
        answer = requests.post(token_url, data=body, headers=form, timeout=30)
        assert answer.status_code == 200, answer.text
    print(
        f"  {count} client assertions made in {time.monotonic() - started:.1f} s"
        f" (rate bound {count / 1.5 / ctx.seconds:,.0f} req/s)",
        flush=True,
    )
    lines = [f"\t{body}" for body in bodies[WARM_UP:]]
    return "/oauth2/token", bodies[WARM_UP], "", write_requests(lines)


def register(scenarios: dict[str, Any]) -> None:
    """Add `client_credentials_private_key_jwt` to a SCENARIOS table."""
    scenarios["client_credentials_private_key_jwt"] = client_credentials_private_key_jwt


for _name in ("bench.load", "__main__"):
    _module = sys.modules.get(_name)
    if _module is not None and isinstance(getattr(_module, "SCENARIOS", None), dict):
        register(_module.SCENARIOS)
