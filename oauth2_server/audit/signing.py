"""Signed statements about the audit trail: checkpoints, retention records, export
manifests (issue #11 items 5 and 6).

A statement is a compact JWS (RFC 7515) signed with the issuer's current ES256 signing
key (the key that signs access tokens, RFC 9068), with header `kid` and a `typ` naming
the statement kind, e.g. `audit-checkpoint+jwt`. Its payload is a JSON object; `iat`
(seconds since the epoch, UTC) is added when absent. Anyone with the issuer's JWKS
(`/.well-known/jwks.json`, or a copy of it for offline checks) can verify one; keys
retired by rotation stay in `oauth2_signing_keys`, so old statements still verify.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Protocol

import jwt
from jwt.algorithms import ECAlgorithm

ALG = "ES256"


class SigningKey(Protocol):
    """What signs: `oauth.keys.SigningKeyPair` (kid and EC private key)."""

    kid: str
    private_key: Any


class StatementError(ValueError):
    """A statement that does not verify: bad signature, unknown `kid`, wrong `typ` or
    `alg`, or not a JWS at all. The message says which, never key material."""


def sign_statement(key: SigningKey, typ: str, payload: Mapping[str, Any]) -> str:
    """The compact JWS of `payload` (a JSON object) signed ES256 by `key`, header
    `{"alg": "ES256", "kid": key.kid, "typ": typ}`; `iat` is set to now when absent."""
    claims = dict(payload)
    claims.setdefault("iat", int(time.time()))
    return jwt.encode(claims, key.private_key, algorithm=ALG, headers={"kid": key.kid, "typ": typ})


def public_keys(jwks: Mapping[str, Any] | Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Verification keys by kid from a JWKS document (`{"keys": [...]}`) or from a mapping
    kid → public JWK (`storage.keys.all_public_jwks`). Keys that are not EC are skipped."""
    jwk_list = jwks["keys"] if "keys" in jwks else list(jwks.values())
    keys: dict[str, Any] = {}
    for jwk in jwk_list:
        if isinstance(jwk, Mapping) and jwk.get("kty") == "EC" and jwk.get("kid"):
            keys[str(jwk["kid"])] = ECAlgorithm.from_jwk(json.dumps(dict(jwk)))
    return keys


def verify_statement(token: str, keys: Mapping[str, Any], typ: str) -> dict[str, Any]:
    """The payload of `token` once its ES256 signature verifies under `keys[kid]` and its
    header `typ` equals `typ`. Raises StatementError otherwise. No time checks: a
    statement stays valid evidence after its signing key is rotated out."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise StatementError(f"not a JWS: {exc}") from None
    if header.get("alg") != ALG:
        raise StatementError(f"alg {header.get('alg')!r} is not {ALG}")
    if header.get("typ") != typ:
        raise StatementError(f"typ {header.get('typ')!r} is not {typ!r}")
    key = keys.get(str(header.get("kid")))
    if key is None:
        raise StatementError(f"unknown kid {header.get('kid')!r}")
    try:
        return jwt.decode(
            token,
            key,
            algorithms=[ALG],
            options={"verify_exp": False, "verify_iat": False, "verify_aud": False},
        )
    except jwt.PyJWTError as exc:
        raise StatementError(f"signature does not verify: {exc}") from None
