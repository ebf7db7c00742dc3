"""Development tools (`oauth2-server dev …`): never imported by `serve` or the app."""
