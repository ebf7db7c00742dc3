"""The `oauth2-server` command: serve, migrate, clients, users, keys, settings."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from sqlalchemy.orm import Session

from oauth2_server import cli_branches, http_limits, logs
from oauth2_server.admin import commands as admin_commands
from oauth2_server.admin.cli_support import CommandFailed, transaction
from oauth2_server.audit import AuditEvent, record
from oauth2_server.config import ConfigError, Settings, settings_table_markdown
from oauth2_server.crypto.keyring import generate_key_spec, load_keyring
from oauth2_server.db import migrate
from oauth2_server.db.engine import create_engine
from oauth2_server.oauth.keys import KeyStore
from oauth2_server.storage.clients import ClientRegistrationError, count_clients, create_client
from oauth2_server.storage.users import UserRegistrationError, create_user

log = logging.getLogger("oauth2_server")


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    async def go() -> str:
        engine = create_engine(settings.database_url, 2)
        try:
            await migrate.upgrade(engine)
            return await migrate.current_revision(engine) or ""
        finally:
            await engine.dispose()

    print(f"database at revision {asyncio.run(go())}")


def _client_created(client: Any, bootstrap: bool = False) -> AuditEvent:
    """The `admin_client_created` audit event of a client registered from the command line
    (or by the first start's bootstrap), written in the registration's transaction."""
    details = {
        "target_client_id": client.client_id,
        "name": client.name,
        "grant_types": list(client.grant_types),
        "redirect_uris": list(client.redirect_uris),
        "scope": client.scope,
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
    }
    if bootstrap:
        details["bootstrap"] = True
    return admin_commands.cli_actor().event("admin_client_created", details=details)


def _prepare(settings: Settings) -> dict[str, Any] | None:
    """Before workers start: signing key present; bootstrap admin on an empty database."""
    keyring = load_keyring(settings)

    def call(session: Session) -> dict[str, Any] | None:
        KeyStore(keyring).ensure(session)
        if not settings.bootstrap_admin or count_clients(session) > 0:
            return None
        client, secret = create_client(
            session,
            name="bootstrap admin",
            grant_types=["client_credentials"],
            redirect_uris=[],
            scope="admin",
        )
        record(session, _client_created(client, bootstrap=True))
        return {"client_id": client.client_id, "client_secret": secret}

    return transaction(settings, call)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    bootstrap = _prepare(settings)
    if bootstrap:
        token_url = f"{settings.issuer_url}/oauth2/token"
        print(
            "\n".join(
                [
                    "=" * 72,
                    "Bootstrap admin client created (shown once; store the secret now):",
                    f"  client_id:     {bootstrap['client_id']}",
                    f"  client_secret: {bootstrap['client_secret']}",
                    "Get an admin access token:",
                    f"  curl -s -u '{bootstrap['client_id']}:<client_secret>' \\",
                    f"       -d grant_type=client_credentials -d scope=admin {token_url}",
                    "=" * 72,
                ]
            ),
            flush=True,
        )
    uvicorn.run(
        "oauth2_server.app:app_from_env",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers or settings.workers,
        # X-Forwarded-* only from the configured proxies; none by default
        proxy_headers=bool(settings.forwarded_allow_ips.strip()),
        forwarded_allow_ips=settings.forwarded_allow_ips.strip(),
        log_config=logs.log_config(settings.log_level),
        log_level=settings.log_level,
        access_log=settings.access_log,
        server_header=False,
        # connection hygiene: a bounded number of connections and tasks per worker (503
        # beyond it), idle keep-alive connections closed, request heads bounded (431
        # past the size, see `http_limits`). Header-read (slowloris) timeouts are the
        # reverse proxy's job: README "Behind a reverse proxy".
        limit_concurrency=settings.limit_concurrency,
        timeout_keep_alive=settings.keep_alive_timeout,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        http=http_limits.http_protocol(),
    )


def _split(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or []:
        out.extend(v for v in value.replace(",", " ").split() if v)
    return out


def cmd_clients_create(settings: Settings, args: argparse.Namespace) -> None:
    def call(session: Session) -> tuple[Any, str | None]:
        client, secret = create_client(
            session,
            name=args.name,
            grant_types=_split(args.grant_type) or ["client_credentials"],
            redirect_uris=_split(args.redirect_uri),
            scope=" ".join(_split(args.scope)),
            public=args.public,
            token_endpoint_auth_method=args.auth_method,
            client_id=args.client_id,
        )
        record(session, _client_created(client))
        return client, secret

    client, secret = transaction(settings, call, (ClientRegistrationError,))
    result = {
        "client_id": client.client_id,
        "client_secret": secret,
        "name": client.name,
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
        "grant_types": list(client.grant_types),
        "redirect_uris": list(client.redirect_uris),
        "scope": client.scope,
    }
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        if value is not None:
            print(f"{key}: {' '.join(value) if isinstance(value, list) else value}")
    if secret:
        print("The client secret is shown only this once.")


def cmd_users_create(settings: Settings, args: argparse.Namespace) -> None:
    password = args.password
    if password is None:
        password = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else None
    if password is None:
        import getpass

        password = getpass.getpass("password: ")

    def call(session: Session) -> Any:
        user = create_user(session, args.username, password, args.subject)
        event = admin_commands.cli_actor().event(
            "admin_user_created", subject=user.subject, details={"username": user.username}
        )
        record(session, event)
        return user

    user = transaction(settings, call, (UserRegistrationError,))
    result = {"username": user.username, "subject": user.subject}
    print(json.dumps(result) if args.json else f"created user {user.username} (sub {user.subject})")


def cmd_keys_rotate(settings: Settings, args: argparse.Namespace) -> None:
    keyring = load_keyring(settings)
    kid = transaction(settings, lambda session: KeyStore(keyring).rotate(session))
    print(f"new signing key {kid}; the previous key stays in JWKS until the next rotation")


def cmd_keys_generate_encryption_key(settings: Settings, args: argparse.Namespace) -> None:
    print(generate_key_spec(args.kid))


def cmd_settings(settings: Settings, args: argparse.Namespace) -> None:
    print(settings_table_markdown())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oauth2-server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server (uvicorn)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=cmd_serve)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    sub.add_parser("settings", help="print the configuration table").set_defaults(func=cmd_settings)

    clients = sub.add_parser("clients", help="manage clients").add_subparsers(
        dest="clients_command", required=True
    )
    create = clients.add_parser("create", help="register a client; prints its secret once")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--grant-type",
        action="append",
        help="authorization_code, refresh_token, client_credentials (repeatable)",
    )
    create.add_argument("--redirect-uri", action="append", help="exact redirect URI (repeatable)")
    create.add_argument("--scope", action="append", help="registered scopes (space separated)")
    create.add_argument("--public", action="store_true", help="public client (PKCE, no secret)")
    create.add_argument(
        "--auth-method",
        choices=["client_secret_basic", "client_secret_post"],
        help="confidential client authentication (default client_secret_basic)",
    )
    create.add_argument(
        "--client-id", help="id to use (A-Z a-z 0-9 . _ ~ -), never a user's subject"
    )
    create.add_argument("--json", action="store_true", help="print JSON for scripts")
    create.set_defaults(func=cmd_clients_create)

    users = sub.add_parser("users", help="manage users").add_subparsers(
        dest="users_command", required=True
    )
    ucreate = users.add_parser("create", help="create a user")
    ucreate.add_argument("--username", required=True)
    ucreate.add_argument("--password", help="default: read from stdin or prompt")
    ucreate.add_argument(
        "--subject", help="token sub to keep (A-Z a-z 0-9 . _ ~ -), never a client_id"
    )
    ucreate.add_argument("--json", action="store_true")
    ucreate.set_defaults(func=cmd_users_create)

    keys = sub.add_parser("keys", help="signing and encryption keys").add_subparsers(
        dest="keys_command", required=True
    )
    keys.add_parser("rotate", help="new current signing key").set_defaults(func=cmd_keys_rotate)
    gen = keys.add_parser("generate-encryption-key", help="print a new keyring entry")
    gen.add_argument("--kid", default="k1")
    gen.set_defaults(func=cmd_keys_generate_encryption_key)
    admin_commands.register(sub, clients, users)  # clients/users …, tokens, audit, janitor
    cli_branches.register(sub)  # branches create|list|status|grant|connect|disconnect …
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `oauth2-server` console script. Exit 2 on configuration errors."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        logging.basicConfig(
            level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
        )
        logs.install_on_root()
        args.func(settings, args)
    except (ConfigError, CommandFailed) as exc:
        print(f"oauth2-server: {exc}", file=sys.stderr)
        return 2
    return 0
