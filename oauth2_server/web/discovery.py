"""RFC 8414 authorization server metadata and the RFC 7517 JWK Set."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from oauth2_server.oauth.assertions import ALGORITHMS as ASSERTION_ALGORITHMS
from oauth2_server.oauth.dpop import ALGORITHMS as DPOP_ALGORITHMS
from oauth2_server.oauth.introspection_jwt import SIGNING_ALG_VALUES
from oauth2_server.oauth.server import OAuthService


def server_metadata(service: OAuthService) -> dict[str, Any]:
    """RFC 8414 §2 metadata: every endpoint, grant, auth method; PKCE S256 only."""
    issuer = service.issuer
    settings = service.settings
    auth_methods = ["client_secret_basic", "client_secret_post", "none", "private_key_jwt"]
    confidential = [method for method in auth_methods if method != "none"]
    signing_algs = list(ASSERTION_ALGORITHMS)  # RFC 8414 §2, private_key_jwt (RFC 7523)
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/oauth2/authorize",
        "token_endpoint": f"{issuer}/oauth2/token",
        "introspection_endpoint": f"{issuer}/oauth2/introspect",
        "revocation_endpoint": f"{issuer}/oauth2/revoke",
        "jwks_uri": f"{issuer}/oauth2/jwks",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": service.grant_types_supported,
        "token_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": signing_algs,
        "introspection_endpoint_auth_methods_supported": confidential,
        "introspection_endpoint_auth_signing_alg_values_supported": signing_algs,
        "introspection_signing_alg_values_supported": SIGNING_ALG_VALUES,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_signing_alg_values_supported": signing_algs,
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
        "pushed_authorization_request_endpoint": f"{issuer}/oauth2/par",
        "dpop_signing_alg_values_supported": list(DPOP_ALGORITHMS),
        "require_pushed_authorization_requests": settings.require_pushed_authorization_requests,
    }


async def metadata(request: Request) -> JSONResponse:
    """GET /.well-known/oauth-authorization-server."""
    return JSONResponse(
        server_metadata(request.app.state.oauth), headers={"Cache-Control": "max-age=300"}
    )


async def jwks(request: Request) -> JSONResponse:
    """GET /oauth2/jwks: public keys of the current and previous signing keys."""
    return JSONResponse(request.app.state.oauth.keys.jwks, headers={"Cache-Control": "max-age=300"})
