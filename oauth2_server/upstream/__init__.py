"""Upstream brokering (DESIGN.md "Upstream brokering (Google, per branch)").

- `providers`: Google and Microsoft identity platform v2, configured from settings;
- `client`: this server as an OAuth client of a provider (async httpx);
- `sealing`: AES-256-GCM of stored tokens and PKCE verifiers under the keyring;
- `connect`: starting a branch's connection (state, PKCE, authorization URL);
- `service`: finishing a connection, disconnecting, and refreshing under a row lock.

Token exchange itself (RFC 8693) is `oauth.token_exchange`.
"""
