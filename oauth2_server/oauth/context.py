"""Per-request facts of one OAuth request, in one typed object (STYLE.md: "Per-request facts
travel in a typed object handed to the grant, never as attributes set on a framework
request").

`OAuthRequest` creates one `TokenContext` per HTTP request (`request.token_context`);
`OAuthService` fills in what it learned before the Authlib call (the pre-authenticated
client, reads made up front), grants and endpoints read it and record what the service
needs afterwards (the family a code starts, what introspection answered, whether the
transaction must commit despite an error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from authlib.oauth2.rfc6749 import OAuth2Error

    from oauth2_server.audit.log import AuditEvent
    from oauth2_server.oauth.clients import OAuthClient
    from oauth2_server.oauth.dpop import Proof
    from oauth2_server.oauth.presented import PresentedToken
    from oauth2_server.storage.client_state import ClientState
    from oauth2_server.storage.exchange import ExchangePrefetch
    from oauth2_server.storage.protocols import IssueWriter


@dataclass(frozen=True)
class IntrospectionPrefetch:
    """Introspection's read made before the Authlib call (RFC 7662 §2.2): the presented
    token as stored (None: not ours, unknown), with its client's `active` flag."""

    token: PresentedToken | None


@dataclass(frozen=True)
class Introspected:
    """What the introspection endpoint answered, for the audit row and the metric."""

    token: PresentedToken | None
    active: bool


@dataclass
class TokenContext:
    """What one token, introspection or revocation request carries besides its parameters.

    - `preauth_client`: the client authenticated before the Authlib call (RFC 6749
      §2.3.1), from a worker's cached record (`OAuthService._preauthenticate`).
    - `client_state`: the asking client's current row state, when a read made for the
      request returned it (introspection's); checked against `preauth_client`.
    - `introspection`, `exchange`: reads made up front (RFC 7662, RFC 8693); None when
      not made, so the endpoint or grant reads in its transaction.
    - `writer`: where token issue and audit rows go: the request's session
      (`SessionWriter`) or the hot path's `IssueBatch` (`Bridge`).
    - `family_id`: the refresh-token family an authorization code starts (RFC 9700
      §4.14.2), set by the grant that consumed the code.
    - `upstream_refreshed`: token exchange has refreshed the upstream grant once.
    - `introspected`: what introspection answered (set by the endpoint).
    - `keep_changes_on_error`: a detected attack (code replay, refresh reuse) revokes
      tokens and fails the request; its changes commit anyway.
    - `oauth_error`: the RFC 6749 §5.2 error Authlib answered, if any.
    - `dpop_jkt`: the thumbprint of the key a valid DPoP proof showed (RFC 9449 §6.1):
      the tokens this request issues are bound to it.
    - `dpop_proof`: that proof while its `jti` is not yet recorded (RFC 9449 §11.1): set
      by `DPoPVerifier.bind`, taken by `DPoPVerifier.claim` once the client is
      authenticated (`OAuthService._claim_dpop`); a proof of an unauthenticated request
      stays unclaimed and writes nothing.
    - `pushed`: the authorization request's parameters came from `/oauth2/par` (RFC 9126).
    - `resources`: the resource indicators (RFC 8707) the access token this request
      issues is for, its `aud`; empty: the default audience. `granted_resources`: what
      an authorization code granted, kept by the family's refresh tokens (§2.2). Set by
      the grants (`oauth.resources`).
    - `refusals`: audit rows of a refused request whose transaction rolls back; the
      service writes them through the batch buffer afterwards.
    - `assertion_error`: why a `private_key_jwt` assertion was refused (RFC 7523 §3),
      for the `invalid_client` description and its audit row.
    """

    preauth_client: OAuthClient | None = None
    client_state: ClientState | None = None
    introspection: IntrospectionPrefetch | None = None
    exchange: ExchangePrefetch | None = None
    writer: IssueWriter | None = None
    family_id: str | None = None
    upstream_refreshed: bool = False
    introspected: Introspected | None = None
    keep_changes_on_error: bool = False
    oauth_error: OAuth2Error | None = None
    dpop_jkt: str | None = None
    dpop_proof: Proof | None = None
    pushed: bool = False
    resources: list[str] = field(default_factory=list)
    granted_resources: list[str] | None = None
    refusals: list[AuditEvent] = field(default_factory=list)
    assertion_error: str | None = None
