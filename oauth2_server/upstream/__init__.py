"""Upstream brokering (DESIGN.md "Upstream brokering (Google, per branch)").

- `providers`: Google and Microsoft identity platform v2, configured from settings;
- `client`: this server as an OAuth client of a provider (async httpx);
- `sealing`: AES-256-GCM of stored tokens and PKCE verifiers under the keyring;
- `connect`: starting a branch's connection (state, PKCE, authorization URL);
- `linking`: finishing it (the provider's callback): one grant per account, many branches;
- `disconnect`: unlinking a branch, revoking the grant with its last branch (RFC 7009);
- `refresh`: refreshing a grant under its refresh mark before token exchange hands it out
  (`claims`: who asked, what was claimed, how it fails; `freshness`: when it is due);
- `worker`: the proactive refresh worker (`oauth2-server worker`, or inside `serve`);
- `health`: a grant's health (`ok`, `refresh_failing`, `needs_consent`) and its gauge;
  `events`: the webhook events of its transitions (through `storage.outbox`);
- `service`: `UpstreamService`, all of the above for the app and the command line.

Token exchange itself (RFC 8693) is `oauth.token_exchange`.
"""
