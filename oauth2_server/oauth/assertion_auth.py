"""`private_key_jwt` client authentication as one step (RFC 7523 §2.2, §3): the client's
registration, its keys (`oauth.client_keys`), the assertion's checks (`oauth.assertions`)
and its `jti` recorded once for the whole deployment (`storage.used_jtis`, key
`client_assertion:<client_id>:<jti>`, kept until `exp` plus the clock skew).

`OAuthService._preauthenticate` calls `AssertionAuthenticator.authenticate` before the
Authlib call; only a client that passes is marked verified, so no path (the
client_credentials hot path included) acts on an unverified assertion.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from oauth2_server.oauth.assertions import (
    CLOCK_SKEW,
    AssertionRefused,
    unverified_subject,
    verify_assertion,
)
from oauth2_server.oauth.bridge import Bridge
from oauth2_server.oauth.client_keys import ClientKeySets, KeySetUnavailable
from oauth2_server.storage.clients import KEY_METHOD, ClientRecord


@dataclass
class AssertionAuthenticator:
    """Checks `private_key_jwt` assertions for this server's `issuer`; `max_age`:
    `OAUTH2_CLIENT_ASSERTION_MAX_AGE` seconds."""

    bridge: Bridge
    keys: ClientKeySets
    issuer: str
    max_age: int

    async def authenticate(
        self, record: ClientRecord | None, client_id: str, assertion: str
    ) -> None:
        """Accept `assertion` as `client_id`'s (`record`: its current or cached row, None
        when unknown): active, registered for `private_key_jwt`, verified against its
        keys, `jti` never used before (recorded now through the hot path's `JtiClaims`:
        one coalesced statement on PostgreSQL). Raises
        AssertionRefused naming the rule; nothing is written then."""
        if record is None or not record.active:
            raise AssertionRefused("unknown or inactive client")
        if record.token_endpoint_auth_method != KEY_METHOD:
            raise AssertionRefused("the client is not registered for private_key_jwt")
        _, kid = unverified_subject(assertion)
        try:
            keys = await self.keys.keys(record, kid)
        except KeySetUnavailable as unavailable:
            raise AssertionRefused(unavailable.description) from None
        verified = verify_assertion(assertion, keys, client_id, self.issuer, self.max_age)
        expires_at = datetime.fromtimestamp(verified.exp + CLOCK_SKEW, UTC)
        replay_key = f"client_assertion:{client_id}:{verified.jti}"
        if not await self.bridge.fast.claim_jti(replay_key, expires_at):
            raise AssertionRefused("the assertion's jti was used before")
