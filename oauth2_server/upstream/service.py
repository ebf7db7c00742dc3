"""The async side of upstream brokering: finishing a connection, disconnecting, and
refreshing a grant before token exchange hands its access token out.

Why this is async code outside Authlib: Authlib's grant hooks run synchronously inside
`AsyncSession.run_sync` on the event loop (`oauth.bridge`), where awaiting httpx is
impossible and a blocking HTTP client would stall every request. So token exchange
validates and authorises in its grant (sync, one read), and when the stored token is
too close to expiry it asks `ensure_fresh` here, which refreshes in its own transactions
and then lets the grant run again. The refresh first commits a refresh-in-progress mark
by one compare-and-set (`storage.upstream_refresh.claim_refresh`), calls the provider holding no
lock, and stores its outcome while the mark is its own, so concurrent exchanges for one
grant cause one upstream refresh, across processes, and share its outcome; within a
process, concurrent callers share one in-flight refresh task. Faults (deadlines, late
answers, dead refreshers, narrowed scope, short lifetimes): `upstream.refresh`.

Audit rows (`upstream_linked`, `upstream_unlinked`, `upstream_refreshed`,
`upstream_refresh_failed`) are written in the transaction of the change they describe;
failures that change nothing go through the audit buffer when there is one.
"""

from __future__ import annotations

from oauth2_server.upstream.base import printable
from oauth2_server.upstream.disconnect import Disconnecting, DisconnectResult
from oauth2_server.upstream.linking import ConnectResult, Linking
from oauth2_server.upstream.refresh import (
    CredentialGone,
    NeedsConsent,
    Refreshing,
    RefreshMisconfigured,
    RefreshUnavailable,
)

__all__ = [
    "ConnectResult",
    "CredentialGone",
    "DisconnectResult",
    "NeedsConsent",
    "RefreshMisconfigured",
    "RefreshUnavailable",
    "UpstreamService",
    "printable",
]


class UpstreamService(Linking, Disconnecting, Refreshing):
    """Connections and refreshes against upstream providers (one per app or CLI run).

    `UpstreamService(settings, sessionmaker, keyring, audit_buffer=None, transport=None)`:
    `sessionmaker` opens this service's own transactions; `keyring` encrypts stored
    tokens; `transport` lets tests substitute httpx's transport.
    """
