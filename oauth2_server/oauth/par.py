"""Pushed Authorization Requests (RFC 9126).

The client sends its authorization request to `/oauth2/par` in a POST body, authenticated
as at the token endpoint (§2: a confidential client with its secret, a public client by
its `client_id`). The request is validated exactly as the authorization endpoint would
(the same Authlib grant: registered redirect URI, `response_type=code`, scope within the
registration, PKCE S256 required), and stored under a fresh `request_uri`
(`urn:ietf:params:oauth:request_uri:` + 256 random bits, stored as SHA-256) for
`OAUTH2_PUSHED_REQUEST_TTL` seconds (at most 60). The answer is 201
`{"request_uri", "expires_in"}` (§2.2); errors are JSON (§2.3), never a redirect.

`/oauth2/authorize?client_id=…&request_uri=…` then takes the stored parameters once (§4);
the request's other query parameters are ignored, so nothing in the front channel can
change what was pushed. A `request_uri` that is unknown, used, expired or pushed by
another client is `invalid_request_uri` (error page, no redirect) and audited
(`pushed_request_refused`).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidRequestError
from starlette.responses import JSONResponse, Response

from oauth2_server.audit.log import AuditBuffer, AuditEvent, RequestContext, record
from oauth2_server.oauth.authorization import AuthorizationPageError
from oauth2_server.oauth.bridge import Bridge, FormPayload, OAuthRequest
from oauth2_server.oauth.grants import ALL_METHODS
from oauth2_server.storage import utcnow
from oauth2_server.storage.pushed_requests import (
    PushedParameters,
    request_uri_hash,
    save_pushed_request,
    take_pushed_request,
)

REQUEST_URI_PREFIX = "urn:ietf:params:oauth:request_uri:"
MAX_REQUEST_URI = 200  # characters; ours are 77
# Client authentication parameters are never part of the stored authorization request.
CREDENTIAL_PARAMETERS = ("client_secret", "client_assertion", "client_assertion_type")


def _digest(request_uri: str) -> str:
    """What audit rows name a `request_uri` by: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(request_uri.encode()).hexdigest()[:16]


@dataclass
class PushedAuthorization:
    """Pushing (`push`, inside `OAuthService`'s client authentication) and taking
    (`take`, for the authorization endpoint) authorization requests. `ttl`: seconds a
    pushed request lives (1–60)."""

    server: Any
    bridge: Bridge
    ttl: int
    audit_buffer: AuditBuffer

    def push(self, request: OAuthRequest) -> Response:
        """RFC 9126 §2.1: authenticate the client, validate the request as the
        authorization endpoint would, store it, answer 201. Runs inside `Bridge.run`."""
        try:
            client = self.server.authenticate_client(request, ALL_METHODS, "pushed_authorization")
            params = self._parameters(request, client.client_id)
            request.payload = FormPayload(params)
            self.server.get_consent_grant(request, end_user=None)
        except OAuth2Error as error:
            error.redirect_uri = None  # §2.3: errors are JSON, never a redirect
            return self.server.handle_error_response(request, error)
        request_uri = REQUEST_URI_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        expires_at = now + timedelta(seconds=self.ttl)
        save_pushed_request(request.db, request_uri, client.client_id, params, now, expires_at)
        record(
            request.db,
            AuditEvent(
                "authorization_request_pushed",
                request.context,
                client_id=client.client_id,
                details={
                    "request_uri_digest": _digest(request_uri),
                    "expires_in": self.ttl,
                    "scope": params.get("scope", [""])[0],
                },
            ),
        )
        return JSONResponse(
            {"request_uri": request_uri, "expires_in": self.ttl},
            status_code=201,
            headers={"Cache-Control": "no-store"},
        )

    @staticmethod
    def _parameters(request: OAuthRequest, client_id: str) -> dict[str, list[str]]:
        """The authorization request in the body: every parameter but the client's
        credentials, `client_id` set to the authenticated client. Raises
        InvalidRequestError for a `request_uri` (§2.1) or another `client_id`, and
        `request_not_supported` for a request object (§3; JAR is not supported, RFC 9101
        §7), which would otherwise be stored and silently ignored."""
        params = {
            name: values
            for name, values in request.payload.datalist.items()
            if name not in CREDENTIAL_PARAMETERS
        }
        if "request_uri" in params:
            raise InvalidRequestError(
                description="request_uri must not be pushed (RFC 9126 section 2.1)"
            )
        if "request" in params:
            raise OAuth2Error(
                description="request objects (JAR, RFC 9101) are not supported",
                error="request_not_supported",
            )
        if params.get("client_id", [client_id]) != [client_id]:
            raise InvalidRequestError(description="client_id is not the authenticated client")
        params["client_id"] = [client_id]
        return params

    async def take(
        self, request_uri: str, client_id: str, context: RequestContext
    ) -> PushedParameters:
        """The parameters pushed by `client_id` under `request_uri`, removed so that it
        works once (RFC 9126 §4). Raises AuthorizationPageError `invalid_request_uri` when
        it is malformed, unknown, used, expired or another client's (audited, batched:
        `pushed_request_refused` with flag `invalid_request_uri`)."""
        taken = None
        if request_uri.startswith(REQUEST_URI_PREFIX) and len(request_uri) <= MAX_REQUEST_URI:
            taken = await self.bridge.write(
                lambda db: take_pushed_request(db, request_uri, client_id)
            )
        if taken is not None and taken.expires_at > utcnow():
            return taken
        reason = "expired" if taken is not None else "unknown, used, or another client's"
        self.audit_buffer.add(
            AuditEvent(
                "pushed_request_refused",
                context,
                client_id=client_id[:64] or None,
                flags=["invalid_request_uri"],
                details={"request_uri_digest": _digest(request_uri), "reason": reason},
            )
        )
        raise AuthorizationPageError(
            "invalid_request_uri", f"the request_uri is {reason} (RFC 9126 section 4)"
        )


def session_key(request_uri: str) -> str:
    """How a browser session remembers which pushed request it is in: a SHA-256 prefix."""
    return request_uri_hash(request_uri)[:32]
