"""`private_key_jwt` client assertions (RFC 7523 §2.2 and §3; RFC 7521 §4.2; OpenID
Connect Core §9), checked with PyJWT.

A request authenticates with `client_assertion_type` =
`urn:ietf:params:oauth:client-assertion-type:jwt-bearer` and `client_assertion`, a JWS
of at most `MAX_ASSERTION` characters, signed by one of the client's registered public
keys (`oauth.client_keys`). It is accepted when:

- its `alg` is one of `ALGORITHMS` (ES256, PS256, EdDSA: never `none`, never HS*) and
  is the algorithm of the key it names (`kid`; a set of one key may omit it);
- the signature verifies;
- `iss` = `sub` = the client's id (§3 items 1-2);
- `aud` is this server's issuer identifier, as a string or a one-element array, and
  nothing else: not the token endpoint URL (draft-ietf-oauth-rfc7523bis §4, which closes
  the audience confusion of RFC 7523 §3 item 3; clients pass `aud=<issuer>`);
- `exp` is present, not past, and at most `OAUTH2_CLIENT_ASSERTION_MAX_AGE` seconds
  ahead (§3 item 4); `nbf` and `iat`, when present, are not in the future (items 5-6);
- `jti` is 1-`MAX_JTI` characters (§3 item 7); the caller records it deployment-wide
  until `exp` (`storage.used_jtis`), so the assertion works once.

Times allow `CLOCK_SKEW` seconds either way. A failure is `AssertionRefused`, answered
`invalid_client` (RFC 6749 §5.2; RFC 7521 §4.2.1).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import jwt

from oauth2_server.oauth.numeric_date import numeric_date
from oauth2_server.registry.client_keys import key_alg

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("ES256", "PS256", "EdDSA")
MAX_ASSERTION = 8192  # characters
MAX_JTI = 256
CLOCK_SKEW = 15  # seconds
JWS_COMPACT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


class AssertionRefused(Exception):
    """An assertion that fails RFC 7523 §3 (`description` says which rule)."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


@dataclass(frozen=True)
class VerifiedAssertion:
    """An accepted assertion's `jti` and `exp` (seconds since the epoch, UTC)."""

    jti: str
    exp: int


def well_formed(assertion: str) -> bool:
    """A JWS compact serialization of at most MAX_ASSERTION characters (RFC 7515 §7.1)."""
    return len(assertion) <= MAX_ASSERTION and JWS_COMPACT.match(assertion) is not None


def unverified_subject(assertion: str) -> tuple[str | None, str | None]:
    """(`sub`, header `kid`) of a well-formed assertion before any check, to find the
    client and its key; None for one that is missing or not a string. Raises
    AssertionRefused when it does not decode as a JWT."""
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise AssertionRefused("client_assertion is not a JWT") from None
    sub, kid = claims.get("sub"), header.get("kid")
    return (sub if isinstance(sub, str) else None, kid if isinstance(kid, str) else None)


def _key(header: dict[str, Any], keys: list[dict[str, Any]]) -> Any:
    """The registered key the header names, as PyJWT's key for its `alg`."""
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in ALGORITHMS:
        raise AssertionRefused(f"the assertion's alg must be one of {', '.join(ALGORITHMS)}")
    candidates = [
        key
        for key in keys
        if key_alg(key) == alg
        and key.get("use") in (None, "sig")
        and (kid is None or key.get("kid") == kid)
    ]
    if not candidates:
        raise AssertionRefused("no registered key of the client matches the assertion's kid/alg")
    if len(candidates) > 1:
        raise AssertionRefused("the client has several keys: the assertion must name its kid")
    try:
        return jwt.PyJWK(candidates[0], algorithm=alg).key
    except (jwt.PyJWTError, ValueError, TypeError):
        raise AssertionRefused("the client's key cannot verify this alg") from None


def _number(claims: dict[str, Any], name: str) -> float | None:
    """Claim `name` as seconds (`numeric_date`), None when absent. Raises AssertionRefused
    when it is present but not a finite number."""
    value = claims.get(name)
    if value is None:
        return None
    seconds = numeric_date(value)
    if seconds is None:
        raise AssertionRefused(f"the assertion's {name} must be a number of seconds")
    return seconds


def _check_claims(claims: dict[str, Any], client_id: str, issuer: str, max_age: int) -> None:
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise AssertionRefused("the assertion's iss and sub must both be the client_id")
    aud = claims.get("aud")
    if aud != issuer and aud != [issuer]:
        raise AssertionRefused("the assertion's aud must be the issuer identifier")
    now = time.time()
    exp = _number(claims, "exp")
    if exp is None or exp < now - CLOCK_SKEW:
        raise AssertionRefused("the assertion has expired")
    if exp > now + max_age + CLOCK_SKEW:
        raise AssertionRefused(f"the assertion's exp is more than {max_age} s ahead")
    for name in ("nbf", "iat"):
        value = _number(claims, name)
        if value is not None and value > now + CLOCK_SKEW:
            raise AssertionRefused(f"the assertion's {name} is in the future")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI:
        raise AssertionRefused(f"the assertion's jti must be a string of 1 to {MAX_JTI} characters")


def verify_assertion(
    assertion: str, keys: list[dict[str, Any]], client_id: str, issuer: str, max_age: int
) -> VerifiedAssertion:
    """Check `assertion` for `client_id` against its registered `keys` and this server's
    `issuer` (module docstring). Raises AssertionRefused."""
    if not well_formed(assertion):
        raise AssertionRefused("client_assertion is not a JWS compact serialization")
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        raise AssertionRefused("client_assertion is not a JWT") from None
    key = _key(header, keys)
    try:
        claims = jwt.decode(
            assertion,
            key,
            algorithms=[header["alg"]],
            options={
                "verify_aud": False,
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.PyJWTError as exc:
        raise AssertionRefused(f"the assertion does not verify: {type(exc).__name__}") from None
    _check_claims(claims, client_id, issuer, max_age)
    return VerifiedAssertion(claims["jti"], int(claims["exp"]))
