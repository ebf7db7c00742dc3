"""The public keys a `private_key_jwt` client registers (RFC 7523 §2.2; RFC 7591 §2 `jwks`,
`jwks_uri`): the rules, shared by the admin API and the command line through
`registry.clients`.

A `private_key_jwt` client registers exactly one of:

- `jwks`: a JWK Set (RFC 7517 §5) of 1 to `MAX_KEYS` public signing keys, at most
  `MAX_JWKS_CHARS` characters of JSON. Each key is EC P-256 (ES256), RSA of 2048 to 8192
  bits (PS256) or OKP Ed25519 (EdDSA); a symmetric `oct` key or any private member (`d`,
  `p`, `q`, `dp`, `dq`, `qi`, `oth`, `k`) is refused, so the server never holds a
  client's private key. With more than one key, each has a distinct `kid`.
- `jwks_uri`: an absolute `https` URL of at most `MAX_URI` characters, no fragment or
  user info; `http` only on a loopback IP literal (`127.0.0.1`, `[::1]`), which the server
  fetches only in development (`oauth.client_keys`).

Other clients register neither. Raises `registry.errors.FieldInvalid` naming the field.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from joserfc import jwk as jose_jwk
from joserfc.errors import JoseError

from oauth2_server.registry.errors import FieldInvalid

KEY_METHOD = "private_key_jwt"
MAX_KEYS = 10
MAX_JWKS_CHARS = 16_384
MAX_URI = 2000
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# kty → (curve or None, the one `alg` such a key signs with here)
KEY_TYPES = {"EC": ("P-256", "ES256"), "OKP": ("Ed25519", "EdDSA"), "RSA": (None, "PS256")}
RSA_BITS = (2048, 8192)
LOOPBACK_HOSTS = ("127.0.0.1", "::1")


def key_alg(key: dict[str, Any]) -> str | None:
    """The one algorithm (`ES256`, `PS256`, `EdDSA`) a registered public key verifies, or
    None for a key of another type or curve."""
    kty = key.get("kty")
    if kty not in KEY_TYPES:
        return None
    curve, alg = KEY_TYPES[kty]
    return alg if curve is None or key.get("crv") == curve else None


def _check_key(key: Any, index: int) -> None:
    where = f"jwks.keys[{index}]"
    if not isinstance(key, dict):
        raise FieldInvalid("jwks", f"{where} is not a JSON object")
    if key.get("kty") == "oct":
        raise FieldInvalid("jwks", f"{where} is a symmetric (oct) key; register public keys")
    private = sorted(PRIVATE_MEMBERS & key.keys())
    if private:
        raise FieldInvalid(
            "jwks", f"{where} holds private key material ({', '.join(private)}); public only"
        )
    alg = key_alg(key)
    if alg is None:
        raise FieldInvalid("jwks", f"{where} must be EC P-256, RSA or OKP Ed25519")
    if key.get("alg") not in (None, alg):
        raise FieldInvalid("jwks", f"{where} has alg {key.get('alg')!r}; it signs {alg}")
    if key.get("use") not in (None, "sig"):
        raise FieldInvalid("jwks", f"{where} is not a signing key (use)")
    try:
        imported = jose_jwk.import_key(key)
    except (JoseError, ValueError, TypeError):
        raise FieldInvalid("jwks", f"{where} is not a valid public JWK (RFC 7517)") from None
    if key["kty"] == "RSA":
        bits = imported.as_dict().get("n", "")
        size = len(bits) * 6  # base64url characters of the modulus, about 6 bits each
        if not RSA_BITS[0] - 8 <= size <= RSA_BITS[1] + 8:
            raise FieldInvalid("jwks", f"{where}: RSA keys must have 2048 to 8192 bits")


def check_jwks(value: Any) -> dict[str, Any]:
    """A registrable JWK Set (module docstring), as given. Raises FieldInvalid (`jwks`)."""
    if not isinstance(value, dict):
        raise FieldInvalid("jwks", "jwks must be a JWK Set: an object with a keys array")
    if len(json.dumps(value, separators=(",", ":"))) > MAX_JWKS_CHARS:
        raise FieldInvalid("jwks", f"jwks must be at most {MAX_JWKS_CHARS} characters of JSON")
    keys = value.get("keys")
    if not isinstance(keys, list) or not 1 <= len(keys) <= MAX_KEYS:
        raise FieldInvalid("jwks", f"jwks.keys must be an array of 1 to {MAX_KEYS} keys")
    for index, key in enumerate(keys):
        _check_key(key, index)
    kids = [key.get("kid") for key in keys]
    if len(keys) > 1 and (
        not all(isinstance(kid, str) and kid for kid in kids) or len(set(kids)) != len(kids)
    ):
        raise FieldInvalid("jwks", "with more than one key, each needs its own kid")
    return value


def check_jwks_uri(value: Any) -> str:
    """A registrable `jwks_uri` (module docstring). Raises FieldInvalid (`jwks_uri`)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_URI:
        raise FieldInvalid("jwks_uri", f"jwks_uri must be a URL of at most {MAX_URI} characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise FieldInvalid("jwks_uri", "jwks_uri is not a valid URL") from None
    del port
    if not parts.hostname or parts.fragment or "#" in value or parts.username is not None:
        raise FieldInvalid("jwks_uri", "jwks_uri must be absolute, without fragment or user info")
    if parts.scheme == "https":
        return value
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return value
    raise FieldInvalid("jwks_uri", "jwks_uri must use https (http only on 127.0.0.1 or [::1])")


def check_client_keys(method: str, merged: dict[str, Any]) -> None:
    """A client's `jwks`/`jwks_uri` (in `merged`, validated in place) against its
    `token_endpoint_auth_method`: exactly one for `private_key_jwt` (RFC 7591 §2: never
    both), none for other methods. Raises FieldInvalid naming the field."""
    jwks, uri = merged.get("jwks"), merged.get("jwks_uri")
    if method != KEY_METHOD:
        if jwks is not None or uri is not None:
            field = "jwks" if jwks is not None else "jwks_uri"
            raise FieldInvalid(field, f"{field} is registered only by private_key_jwt clients")
        return
    if jwks is not None and uri is not None:
        raise FieldInvalid("jwks_uri", "register jwks or jwks_uri, not both (RFC 7591 section 2)")
    if jwks is None and uri is None:
        raise FieldInvalid("jwks", "a private_key_jwt client needs jwks or jwks_uri")
    if jwks is not None:
        merged["jwks"] = check_jwks(jwks)
    else:
        merged["jwks_uri"] = check_jwks_uri(uri)
