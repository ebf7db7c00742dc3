"""JWT responses for token introspection (RFC 9701).

A resource server that sends `Accept: application/token-introspection+jwt` to the
introspection endpoint gets the RFC 7662 §2.2 answer as a signed JWT (§5) instead of plain
JSON: header `typ: token-introspection+jwt` (§5, §8.1: never confusable with an access
token, whose `typ` is `at+jwt`), `alg: ES256` and the `kid` of the issuer's current signing
key (the JWKS at `/oauth2/jwks` verifies it); claims `iss` (this issuer), `aud` (the
client_id of the resource server that asked), `iat` (seconds, UTC), and
`token_introspection`: the RFC 7662 members, `{"active": false}` alone for a token that is
not active. Errors (client authentication, bad requests) stay JSON (RFC 7662 §2.3).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from oauth2_server.audit.signing import ALG, sign_statement
from oauth2_server.oauth.keys import KeyStore

MEDIA_TYPE = "application/token-introspection+jwt"
TYP = "token-introspection+jwt"
MAX_ACCEPT = 1024  # characters of the Accept header looked at


def wants_jwt(accept: str | None) -> bool:
    """True when the `Accept` header (RFC 9110 §12.5.1) lists
    `application/token-introspection+jwt` with a non-zero quality (RFC 9701 §4). A
    malformed quality counts as 1; only the first `MAX_ACCEPT` characters are read."""
    for item in (accept or "")[:MAX_ACCEPT].split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if media.lower() != MEDIA_TYPE:
            continue
        quality = next((p.split("=", 1)[1] for p in params if p.lower().startswith("q=")), "1")
        try:
            if float(quality) <= 0:
                continue
        except ValueError:
            pass
        return True
    return False


def signed_answer(response: Response, keys: KeyStore, issuer: str, audience: str) -> Response:
    """The 200 JSON introspection `response` as an RFC 9701 §5 JWT response for the
    resource server `audience` (its client_id), signed with the current key. Headers such
    as `Cache-Control: no-store` are kept; the content type becomes
    `application/token-introspection+jwt`. Raises RuntimeError when no key is loaded."""
    if keys.current is None:
        raise RuntimeError("no signing key loaded")
    answer: dict[str, Any] = json.loads(bytes(response.body))
    claims = {"iss": issuer, "aud": audience, "token_introspection": answer}
    token = sign_statement(keys.current, TYP, claims)
    headers = {
        name: value
        for name, value in response.headers.items()
        if name.lower() not in {"content-type", "content-length"}
    }
    return Response(token, status_code=200, headers=headers, media_type=MEDIA_TYPE)


def as_requested(response: Response, request: Any, keys: KeyStore, issuer: str) -> Response:
    """The introspection `response` in the form the authenticated caller asked for: the
    signed JWT (`signed_answer`) for a 200 answer when `Accept` asks for it (RFC 9701 §4),
    else unchanged. `request` has `headers` and `client` (None when unauthenticated)."""
    if response.status_code != 200 or request.client is None:
        return response
    if not wants_jwt(request.headers.get("accept")):
        return response
    return signed_answer(response, keys, issuer, request.client.client_id)


SIGNING_ALG_VALUES = [ALG]
"""`introspection_signing_alg_values_supported` (RFC 9701 §7)."""
