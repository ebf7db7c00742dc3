"""Token formats, in one module: RFC 9068 JWT access tokens and opaque refresh tokens.

Access tokens are JWTs signed ES256 (PyJWT) with header `typ: at+jwt` and the `kid` of a
key in JWKS; claims `iss sub aud exp iat jti client_id scope` (RFC 9068 §2.2); `aud` is
`OAUTH2_AUDIENCE`, or the resource indicators the request named (RFC 8707). Storage
keeps only the `jti`. Refresh tokens are 256-bit opaque strings stored as SHA-256.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from authlib.oauth2 import OAuth2Error
from cachetools import TLRUCache

from oauth2_server.crypto.hashing import new_opaque_token
from oauth2_server.oauth.bridge import current_request
from oauth2_server.oauth.keys import ALG, KeyStore
from oauth2_server.oauth.resources import audience

AT_JWT_TYP = "at+jwt"


@dataclass(frozen=True)
class IssuedToken:
    """What `save_token` needs to store about a freshly generated token response."""

    jti: str
    subject: str
    user_id: int | None
    scope: str
    grant_type: str
    issued_at: datetime
    expires_at: datetime
    refresh_token: str | None = field(repr=False)
    refresh_expires_at: datetime | None


class AccessTokenCodec:
    """Signs and verifies RFC 9068 access tokens with the issuer's `KeyStore`."""

    def __init__(
        self,
        keys: KeyStore,
        issuer: str,
        audience: str,
        cache_size: int = 10_000,
        timer: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.cache_size = cache_size
        # SHA-256 of a token → (claims, kid); each entry lives until the token's `exp`
        # (epoch seconds: `timer` is the wall clock), at most `cache_size` of them.
        self._verified: TLRUCache[bytes, tuple[dict[str, Any], str]] = TLRUCache(
            maxsize=cache_size, ttu=_until_expiry, timer=timer
        )

    def encode(self, claims: dict[str, Any]) -> str:
        """Sign `claims` (plus `iss`/`aud`) with the current key; header carries kid and typ."""
        current = self.keys.current
        if current is None:
            raise RuntimeError("no signing key loaded")
        payload = {"iss": self.issuer, "aud": self.audience, **claims}
        return jwt.encode(
            payload,
            current.private_key,
            algorithm=ALG,
            headers={"kid": current.kid, "typ": AT_JWT_TYP},
        )

    def decode(self, token: str) -> dict[str, Any] | None:
        """Verified claims of one of our access tokens, or None (bad signature, expired,
        unknown kid, wrong issuer or `typ`, malformed). RFC 9068 §4.

        A verified token's claims are remembered (keyed by the SHA-256 of the exact token
        string; a `cachetools.TLRUCache` of `cache_size` entries, least recently used
        dropped first) until it expires or its key leaves the key set, so a resource
        server introspecting the same token on every call does not pay an ES256
        verification each time. Revocation is not cached: callers still read the `jti` row.
        """
        key = hashlib.sha256(token.encode()).digest()
        try:  # a hit is the common case: one cache lookup (`get` would take two)
            claims, kid = self._verified[key]
        except KeyError:
            pass
        else:
            if kid in self.keys.public_keys:
                return claims
            del self._verified[key]
        claims = self._verify(token)
        if claims is not None:
            self._verified[key] = (claims, claims.pop("_kid"))
        return claims

    def _verify(self, token: str) -> dict[str, Any] | None:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        # The header is attacker-controlled JSON: any member may be any JSON type.
        typ, kid = header.get("typ"), header.get("kid")
        if not isinstance(typ, str) or typ.lower() not in {AT_JWT_TYP, "application/at+jwt"}:
            return None
        if not isinstance(kid, str) or header.get("alg") != ALG:
            return None
        key = self.keys.public_keys.get(kid)
        if key is None:
            return None
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALG],
                issuer=self.issuer,
                options={"verify_aud": False, "require": ["exp", "iat", "jti", "sub"]},
            )
        except jwt.PyJWTError:
            return None
        claims["_kid"] = header["kid"]
        return claims


def _until_expiry(_key: bytes, value: tuple[dict[str, Any], str], _now: float) -> float:
    """A verified token's cache entry expires with the token (`exp`, epoch seconds)."""
    return float(value[0]["exp"])


class DPoPRequired(OAuth2Error):
    """RFC 9449 §5.2: a client registered with `dpop_bound_access_tokens` sent no proof."""

    error = "invalid_dpop_proof"
    status_code = 400


class TokenGenerator:
    """Authlib's token generator (`register_token_generator("default", …)`).

    Returns the RFC 6749 §5.1 response dict plus a private `_issued` entry
    (`IssuedToken`) that `save_token` pops before the response is sent. Lifetimes come
    from settings (seconds), never Authlib's 10-day default.
    """

    def __init__(self, codec: AccessTokenCodec, access_ttl: int, refresh_ttl: int) -> None:
        self.codec = codec
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl

    def __call__(
        self,
        grant_type: str,
        client: Any,
        user: Any = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        now = datetime.now(UTC).replace(microsecond=0)
        ttl = expires_in or self.access_ttl
        expires_at = now + timedelta(seconds=ttl)
        jti = str(uuid.uuid4())
        subject = user.subject if user is not None else client.client_id
        scope = scope or ""
        claims: dict[str, Any] = {
            "sub": subject,
            "client_id": client.client_id,
            "scope": scope,
            "jti": jti,
            "iat": int(now.timestamp()),
            "exp": int(expires_at.timestamp()),
        }
        context = current_request().token_context
        aud = audience(context.resources)
        if aud is not None:  # RFC 8707 §2, RFC 9068 §3: the resource(s) asked for
            claims["aud"] = aud
        jkt = context.dpop_jkt
        if jkt is None and client.record.dpop_bound_access_tokens:
            raise DPoPRequired(description="this client must send a DPoP proof (RFC 9449)")
        if jkt is not None:  # RFC 9449 §6.1: bound to the proof's key
            claims["cnf"] = {"jkt": jkt}
        token: dict[str, Any] = {
            "access_token": self.codec.encode(claims),
            "token_type": "DPoP" if jkt is not None else "Bearer",  # RFC 9449 §5
            "expires_in": ttl,
        }
        if scope:
            token["scope"] = scope
        refresh_token = None
        refresh_expires_at = None
        if include_refresh_token and user is not None:
            refresh_token = new_opaque_token()
            refresh_expires_at = now + timedelta(seconds=self.refresh_ttl)
            token["refresh_token"] = refresh_token
        token["_issued"] = IssuedToken(
            jti=jti,
            subject=subject,
            user_id=user.id if user is not None else None,
            scope=scope,
            grant_type=grant_type,
            issued_at=now,
            expires_at=expires_at,
            refresh_token=refresh_token,
            refresh_expires_at=refresh_expires_at,
        )
        return token
