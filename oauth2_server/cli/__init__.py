"""The `oauth2-server` command line: `main` (parser, serve, migrate, keys), `commands`
(clients, users, tokens), `branches`, `audit`, `dev`, and `support` (exit codes, sessions,
JSON output). It calls the same services as the admin API and nothing of the HTTP layer."""
