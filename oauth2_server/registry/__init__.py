"""One service per resource: clients, users, branches (and token revocation).

Each module here holds the rules of one resource and makes its changes: it validates,
writes through `storage`, and records the change's `admin_*` audit row in the same
transaction (DESIGN.md invariant 6). The admin API (`admin/`) and the command line
(`cli/`) both call these functions, so a rule is written once and both paths agree.

Functions take a synchronous `sqlalchemy.orm.Session` (the admin API runs them through
`Bridge.write`/`read`, the CLI through `cli.support.transaction`) and an `Actor`
(`registry.actor`). Failures are the typed errors of `registry.errors` (field invalid,
not found, conflict), which the HTTP layer maps to JSON and the CLI to exit statuses.
This package imports no HTTP code.
"""
