"""The HTTP layer: parses requests, calls `oauth.server.OAuthService`, renders pages."""
