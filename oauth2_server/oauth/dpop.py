"""DPoP: proof of possession of a client's key for tokens (RFC 9449).

A client that sends a `DPoP` header to the token endpoint proves it holds a private key
(§4): the header is a JWT signed by that key, with the public key in its `jwk` header.
`DPoPVerifier.bind` checks the proof per §4.3 and, when it holds, the token request's
access token is bound to the key: claim `cnf.jkt` (the key's RFC 7638 SHA-256
thumbprint, §6.1) and `token_type: DPoP` (§5). Introspection returns `cnf` (§6.2).

§4.3 checks, in order: one `DPoP` header of at most `MAX_PROOF` characters; a JWS with
`typ: dpop+jwt`, an `alg` of `ALGORITHMS` (asymmetric; never `none` or HS*), a public
`jwk` (no private members) that verifies the signature; claims `jti`, `htm` (the request
method), `htu` (the endpoint's URL without query or fragment, compared after RFC 3986
§6.2.2–6.2.3 normalisation), `iat` within `OAUTH2_DPOP_PROOF_WINDOW` seconds of now; a
server nonce when `OAUTH2_DPOP_NONCE` is on (§8: missing or stale is `use_dpop_nonce`
with a fresh `DPoP-Nonce` header); and `jti` seen once in the whole deployment until the
window has passed (§11.1; `storage.used_jtis`, every worker and instance). A failed check
is 400 `invalid_dpop_proof` (§5; with `WWW-Authenticate: DPoP error="invalid_dpop_proof"`),
audited with flag `invalid_dpop_proof`, and nothing is issued.

At the token endpoint the checks are split in two ("These checks may be performed in any
order", §4.3): `bind` makes the stateless ones before client authentication and keeps the
proof pending (`TokenContext.dpop_proof`); `claim` records its `jti` only once the client
is authenticated (`OAuthService._claim_dpop`), before the grant runs. So a caller with a
self-made proof and a wrong secret or assertion writes no `oauth2_used_jtis` row: the
replay store grows only with requests that could have been issued a token.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import jwt
from itsdangerous import BadSignature, URLSafeTimedSerializer
from joserfc import jwk as jose_jwk
from joserfc.errors import JoseError
from starlette.responses import Response

from oauth2_server.audit.log import AuditBuffer, AuditEvent, RequestContext
from oauth2_server.oauth.authlib_server import oauth_error_response
from oauth2_server.oauth.bridge import Bridge, OAuthRequest
from oauth2_server.oauth.exchange_flow import claimed_client_id
from oauth2_server.oauth.numeric_date import numeric_date

ALGORITHMS = ("ES256", "PS256", "EdDSA")
PROOF_TYP = "dpop+jwt"
MAX_PROOF = 4096  # characters of a DPoP header
MAX_JTI = 256
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
DEFAULT_PORTS = {"http": 80, "https": 443}


class DPoPError(Exception):
    """A proof that fails §4.3: `error` is `invalid_dpop_proof` or `use_dpop_nonce`."""

    def __init__(self, description: str, error: str = "invalid_dpop_proof") -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True)
class Proof:
    """A verified proof: the key's RFC 7638 thumbprint (`jkt`), its `jti` and `iat`
    (seconds since the epoch, UTC), and its `nonce` and `ath` claims if any."""

    jkt: str
    jti: str
    iat: int
    nonce: str | None
    ath: str | None = None


def normalized_url(url: str) -> tuple[str, str, int | None, str]:
    """(scheme, host, port, path) of `url` for comparison: scheme and host lowercased,
    the scheme's default port made explicit, empty path as `/`; query and fragment
    dropped (RFC 9449 §4.3 item 9, RFC 3986 §6.2.2–6.2.3). Raises ValueError."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or DEFAULT_PORTS.get(scheme)
    return scheme, (parts.hostname or "").lower(), port, parts.path or "/"


def access_token_hash(access_token: str) -> str:
    """`ath` (§4.2): base64url (no padding) SHA-256 of the access token's ASCII."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _public_key(header: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The header's `jwk` and the key it makes for its `alg`. Raises DPoPError."""
    key = header.get("jwk")
    if not isinstance(key, dict):
        raise DPoPError("the proof has no jwk header with the public key")
    if PRIVATE_MEMBERS & key.keys():
        raise DPoPError("the proof's jwk holds private key material")
    try:
        return key, jwt.PyJWK(key, algorithm=header["alg"]).key
    except (jwt.PyJWTError, KeyError, ValueError, TypeError):
        raise DPoPError("the proof's jwk is not a key for its alg") from None


def verify_proof(proof: str, method: str, url: str, window: int) -> Proof:
    """Check a DPoP proof JWT (RFC 9449 §4.3 items 2–9 and 11) for a `method` request to
    `url`, `iat` within `window` seconds of now. The caller checks the nonce, `jti`
    replay, and where an access token is presented its `ath` (`check_presented`). Raises
    DPoPError."""
    if len(proof) > MAX_PROOF:
        raise DPoPError(f"the proof is longer than {MAX_PROOF} characters")
    try:
        header = jwt.get_unverified_header(proof)
    except jwt.PyJWTError:
        raise DPoPError("the proof is not a JWS") from None
    if header.get("typ") != PROOF_TYP:
        raise DPoPError(f"the proof's typ must be {PROOF_TYP}")
    if header.get("alg") not in ALGORITHMS:
        raise DPoPError(f"the proof's alg must be one of {', '.join(ALGORITHMS)}")
    public_jwk, key = _public_key(header)
    try:
        claims = jwt.decode(
            proof,
            key,
            algorithms=[header["alg"]],
            options={"require": ["jti", "htm", "htu", "iat"], "verify_iat": False},
        )
    except jwt.PyJWTError as exc:
        raise DPoPError(f"the proof does not verify: {type(exc).__name__}") from None
    _check_claims(claims, method, url, window)
    try:  # PyJWT ignores members joserfc checks (`use`, `key_ops`, `kid`: RFC 7517 §4)
        thumbprint = jose_jwk.import_key(public_jwk).thumbprint()
    except (JoseError, ValueError, TypeError):
        raise DPoPError("the proof's jwk is not a valid JWK (RFC 7517)") from None
    nonce, ath = claims.get("nonce"), claims.get("ath")
    return Proof(
        thumbprint,
        claims["jti"],
        int(claims["iat"]),
        nonce if isinstance(nonce, str) else None,
        ath if isinstance(ath, str) else None,
    )


def _check_claims(claims: dict[str, Any], method: str, url: str, window: int) -> None:
    jti, htu, iat = claims["jti"], claims["htu"], claims["iat"]
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI:
        raise DPoPError(f"the proof's jti must be a string of 1 to {MAX_JTI} characters")
    if claims["htm"] != method:
        raise DPoPError(f"the proof's htm is not {method}")
    try:
        same = isinstance(htu, str) and normalized_url(htu) == normalized_url(url)
    except ValueError:
        same = False
    if not same:
        raise DPoPError("the proof's htu is not this endpoint's URL")
    issued = numeric_date(iat)  # NaN, ±Infinity, past float's range: refused
    if issued is None or abs(time.time() - issued) > window:
        raise DPoPError(f"the proof's iat is not within {window} s of now")


@dataclass
class DPoPVerifier:
    """Checks the `DPoP` header of token requests and binds their tokens (module
    docstring). `window`: seconds a proof's `iat` may be from now (and how long its `jti`
    is remembered); `nonce_key`: signs server nonces when `require_nonce`."""

    bridge: Bridge
    audit_buffer: AuditBuffer
    window: int
    require_nonce: bool
    nonce_key: bytes

    def __post_init__(self) -> None:
        self._nonces = URLSafeTimedSerializer(self.nonce_key, salt="oauth2-server dpop nonce")

    def new_nonce(self) -> str:
        """A server nonce (§8), valid `window` seconds."""
        return self._nonces.dumps("n")

    def _nonce_ok(self, nonce: str | None) -> bool:
        if nonce is None:
            return False
        try:
            self._nonces.loads(nonce, max_age=self.window)
        except BadSignature:
            return False
        return True

    async def _claim(self, proof: Proof) -> None:
        """Record the proof's `jti` deployment-wide (§11.1) through the hot path's
        `JtiClaims` (one coalesced statement on PostgreSQL). Raises DPoPError on a replay,
        DatabaseUnavailable when the database cannot be reached."""
        expires_at = datetime.now(UTC) + timedelta(seconds=2 * self.window)
        replay_key = f"dpop:{proof.jkt}:{proof.jti}"
        if not await self.bridge.fast.claim_jti(replay_key, expires_at):
            raise DPoPError("the proof's jti was used before")

    async def check_presented(
        self,
        proofs: list[str],
        method: str,
        url: str,
        token: str,
        claims: Mapping[str, Any],
        context: RequestContext | None = None,
    ) -> None:
        """A protected resource's check (§7.1) of a DPoP-bound access `token` (its verified
        `claims`) presented with `Authorization: DPoP`: one proof, valid for this `method`
        and `url`, whose `ath` is the token's hash (§4.3 item 12) and whose key is the
        token's `cnf.jkt` (item 13), used once. Raises DPoPError; with the request's
        `context`, the refusal is audited as at the token endpoint (`dpop_proof_refused`,
        flag `invalid_dpop_proof`, the token's client and `jti`)."""
        try:
            await self._check_presented(proofs, method, url, token, claims)
        except DPoPError as exc:
            if context is not None:
                client_id, jti = claims.get("client_id"), claims.get("jti")
                self.audit_buffer.add(
                    AuditEvent(
                        "dpop_proof_refused",
                        context,
                        client_id=client_id if isinstance(client_id, str) else None,
                        token_id=jti if isinstance(jti, str) else None,
                        flags=[exc.error],
                        details={"reason": exc.description, "htu": url},
                    )
                )
            raise

    async def _check_presented(
        self, proofs: list[str], method: str, url: str, token: str, claims: Mapping[str, Any]
    ) -> None:
        if len(proofs) != 1:
            raise DPoPError("send exactly one DPoP header with a DPoP-bound token")
        proof = verify_proof(proofs[0], method, url, self.window)
        if proof.ath != access_token_hash(token):
            raise DPoPError("the proof's ath does not match the access token")
        bound = claims.get("cnf")
        if not isinstance(bound, dict) or bound.get("jkt") != proof.jkt:
            raise DPoPError("the proof's key is not the one the token is bound to")
        await self._claim(proof)

    async def bind(self, request: OAuthRequest, url: str) -> Response | None:
        """Check the request's `DPoP` header for `url` (§4.3, all but the `jti` replay
        check: no state is read or written); on success set `token_context.dpop_jkt` (the
        token request's tokens are bound to the key), keep the proof pending for `claim` in
        `token_context.dpop_proof`, and return None. No header: None. A bad proof: the 400
        error response, audited."""
        values = request.headers.getlist("dpop")
        if not values:
            return None
        try:
            if len(values) > 1:
                raise DPoPError("more than one DPoP header")
            proof = verify_proof(values[0], request.method, url, self.window)
            if self.require_nonce and not self._nonce_ok(proof.nonce):
                raise DPoPError("a server nonce is required (DPoP-Nonce)", "use_dpop_nonce")
        except DPoPError as exc:
            return self._refuse(request, exc)
        request.token_context.dpop_jkt = proof.jkt
        request.token_context.dpop_proof = proof
        return None

    async def claim(self, request: OAuthRequest) -> Response | None:
        """Record the `jti` of the proof `bind` left pending (§11.1), once; call it after
        client authentication and before the grant runs. None when there is nothing to
        claim or the claim holds; a `jti` used before: the 400 `invalid_dpop_proof`
        response, audited as a proof refused by `bind`. Raises DatabaseUnavailable."""
        context = request.token_context
        proof, context.dpop_proof = context.dpop_proof, None
        if proof is None:
            return None
        try:
            await self._claim(proof)
        except DPoPError as exc:
            return self._refuse(request, exc)
        return None

    def _refuse(self, request: OAuthRequest, exc: DPoPError) -> Response:
        self.audit_buffer.add(
            AuditEvent(
                "dpop_proof_refused",
                request.context,
                client_id=claimed_client_id(request),
                grant_type=request.form.get("grant_type"),
                flags=[exc.error],
                details={"reason": exc.description},
            )
        )
        headers = {"WWW-Authenticate": f'DPoP error="{exc.error}"'}
        if exc.error == "use_dpop_nonce":
            headers["DPoP-Nonce"] = self.new_nonce()
        return oauth_error_response(exc.error, exc.description, 400, headers)
