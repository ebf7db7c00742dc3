"""Benchmark scenario `client_credentials_dpop`: the client_credentials grant with a DPoP
proof (RFC 9449 §4) on every request, so each access token is bound to the client's key.

wrk cannot sign, so just before the run this module makes N proofs, each with its own
`jti` and `iat` = now (ES256, one key: a client keeps its key), writes them to a requests
file (bench/load.py `run_wrk`: one line per request, each sent once) and warms the server
up with 50 more. N = run seconds × the rate bound × 1.5 + 64, the rate bound being the
plain client_credentials rate measured earlier in the same run (else `BENCH_SIGNED_RATE`,
default 3000 req/s). A run that sends more requests than N replays proofs, which the
server refuses (`invalid_dpop_proof`, counted as errors): load.py then prints EXHAUSTED.
Proofs are only good for `OAUTH2_DPOP_PROOF_WINDOW` seconds (default 60) from their
`iat`, so the run must end within that (a warning is printed when `--seconds` says not).

Each request costs the server: parsing and verifying the ES256 proof, its RFC 7638
thumbprint, and one more write (the `jti`, `oauth2_used_jtis`) besides the token's row
and audit row.
"""

from __future__ import annotations

import atexit
import base64
import json
import math
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.algorithms import ECAlgorithm

BODY = "grant_type=client_credentials&scope=read"
WARM_UP = 50
DEFAULT_RATE = 3000.0  # req/s: the bound used when client_credentials has not run first
WINDOW = 60  # OAUTH2_DPOP_PROOF_WINDOW's default, seconds


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ProofSigner:
    """Makes DPoP proofs (RFC 9449 §4.2) for POSTs to `htu` with one ES256 key: the JWS
    header (typ dpop+jwt, the public JWK) is encoded once, each proof signs fresh claims."""

    def __init__(self, htu: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        jwk = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}
        self.header = b64url(json.dumps(header, separators=(",", ":")).encode())
        self.htu = htu

    def proof(self, now: int) -> str:
        """One proof: a fresh 128-bit `jti`, `htm` POST, `htu`, `iat` = `now` (seconds)."""
        claims = {"jti": secrets.token_urlsafe(16), "htm": "POST", "htu": self.htu, "iat": now}
        return es256_jws(self.key, self.header, claims)


def es256_jws(key: ec.EllipticCurvePrivateKey, header: str, claims: dict[str, Any]) -> str:
    """A compact JWS (RFC 7515 §7.1) of `claims` under the encoded `header`, signed ES256
    (RFC 7518 §3.4: R || S, 32 bytes each)."""
    signing_input = f"{header}.{b64url(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def proof_count(seconds: int, rate_hint: float | None) -> int:
    """N for a run of `seconds`: the rate bound × 1.5 margin, plus 64."""
    rate = rate_hint or float(os.environ.get("BENCH_SIGNED_RATE", DEFAULT_RATE))
    return math.ceil(seconds * rate * 1.5) + 64


def write_requests(lines: list[str]) -> Path:
    """The requests file (bench/load.py `run_wrk`): one line per request, each
    "<DPoP header>\\t<body>" (either may be empty). Deleted at exit."""
    handle = tempfile.NamedTemporaryFile("w", suffix=".requests", delete=False)  # noqa: SIM115
    with handle:
        handle.write("".join(f"{line}\n" for line in lines))
    path = Path(handle.name)
    atexit.register(path.unlink, missing_ok=True)
    return path


def client_credentials_dpop(ctx: Any) -> tuple[str, str, str, Path]:
    """bench/load.py scenario: (path, body, Authorization, requests file) from a
    BenchContext; the bench client (client_secret_basic) sends a fresh proof each time."""
    token_url = ctx.base_url + "/oauth2/token"
    window = int(ctx.env.get("OAUTH2_DPOP_PROOF_WINDOW", WINDOW))
    if ctx.seconds + 10 > window:
        print(
            f"  warning: a {ctx.seconds} s run outlives the {window} s DPoP proof window;"
            " late proofs will be refused",
            flush=True,
        )
    signer = ProofSigner(token_url)
    count = proof_count(ctx.seconds, ctx.rate_hint)
    started = time.monotonic()
    now = int(time.time())
    proofs = [signer.proof(now) for _ in range(count + WARM_UP)]
    auth = "Basic " + base64.b64encode(f"{ctx.client_id}:{ctx.secret}".encode()).decode()
    headers = {"Authorization": auth, "Content-Type": "application/x-www-form-urlencoded"}
    for proof in proofs[:WARM_UP]:
        answer = requests.post(token_url, data=BODY, headers={**headers, "DPoP": proof}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["token_type"] == "DPoP", answer.text
    print(
        f"  {count} DPoP proofs made in {time.monotonic() - started:.1f} s"
        f" (rate bound {count / 1.5 / ctx.seconds:,.0f} req/s)",
        flush=True,
    )
    return "/oauth2/token", BODY, auth, write_requests([f"{proof}\t" for proof in proofs[WARM_UP:]])


def register(scenarios: dict[str, Any]) -> None:
    """Add `client_credentials_dpop` to a SCENARIOS table."""
    scenarios["client_credentials_dpop"] = client_credentials_dpop


for _name in ("bench.load", "__main__"):
    _module = sys.modules.get(_name)
    if _module is not None and isinstance(getattr(_module, "SCENARIOS", None), dict):
        register(_module.SCENARIOS)
