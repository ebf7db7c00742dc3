"""The `oauth2-server` command: serve, migrate, keys, settings; clients, users, tokens
(`cli.commands`), audit and janitor (`cli.audit`), branches (`cli.branches`), dev
(`cli.dev`). Imports no HTTP code: `serve` hands uvicorn the app factory by name."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib
import json
import logging
import logging.config
import os
import socket
import sys
import tempfile
import traceback
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from oauth2_server import logs
from oauth2_server.cli.support import (
    EXIT_CONFLICT,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    CommandFailed,
    add_json,
    cli_actor,
    explain,
    keyring_mismatch,
    prepare_database,
    transaction,
)
from oauth2_server.config import SETTINGS, ConfigError, Settings, settings_table_markdown
from oauth2_server.crypto.keyring import DecryptionError, Keyring, generate_key_spec, load_keyring
from oauth2_server.db import migrate
from oauth2_server.db.engine import create_engine
from oauth2_server.registry import clients as registry_clients
from oauth2_server.storage import keys as key_storage
from oauth2_server.storage.clients import count_clients

if TYPE_CHECKING:
    from oauth2_server.oauth.keys import KeyStore

log = logging.getLogger("oauth2_server")


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    async def go() -> str:
        engine = create_engine(settings.database_url, 2)
        try:
            await migrate.upgrade(engine)
            return await migrate.current_revision(engine) or ""
        finally:
            await engine.dispose()

    prepare_database(settings)
    revision = asyncio.run(go())
    print(json.dumps({"revision": revision}) if args.json else f"database at revision {revision}")


def _keystore(settings: Settings, session: Session) -> KeyStore:
    """The signing keys, loaded with the keyring checked against the database first.

    A development keyring file that is missing while the database holds keys is not
    regenerated; one that cannot decrypt the current signing key (lost and regenerated,
    or replaced) is refused. Both raise CommandFailed naming the file (exit status 2)."""
    dev_file_missing = not settings.encryption_keys and not Path(settings.dev_key_file).exists()
    if dev_file_missing and key_storage.published_keys(session):
        raise keyring_mismatch(settings, missing=True)
    from oauth2_server.oauth.keys import KeyStore  # JWT code: serve and `keys` only

    keyring: Keyring = load_keyring(settings)
    store = KeyStore(keyring)
    try:
        store.load(session)
    except DecryptionError:
        raise keyring_mismatch(settings) from None
    return store


def _prepare(settings: Settings) -> dict[str, Any] | None:
    """Before workers start: signing key present; bootstrap admin on an empty database."""

    def call(session: Session) -> dict[str, Any] | None:
        _keystore(settings, session).ensure(session)
        if not settings.bootstrap_admin or count_clients(session) > 0:
            return None
        body = {"name": "bootstrap admin", "grant_types": ["client_credentials"], "scope": "admin"}
        actor = cli_actor()
        client, secret = registry_clients.create_client(session, actor, body, bootstrap=True)
        return {"client_id": client["client_id"], "client_secret": secret}

    return transaction(settings, call)


def check_port(host: str, port: int) -> None:
    """Bind (and release) `host:port` the way uvicorn will, before anything is written or
    printed. Raises CommandFailed: in use (exit status 4), not allowed or not an address
    of this machine (2)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CommandFailed(
                f"{where} is already in use (OAUTH2_PORT/--port, OAUTH2_HOST/--host): stop "
                "the other server or choose another port",
                EXIT_CONFLICT,
            ) from None
        if exc.errno == errno.EACCES:
            raise CommandFailed(
                f"not allowed to listen on {where} (OAUTH2_PORT/--port): ports below 1024 "
                "need privileges; choose another port"
            ) from None
        raise CommandFailed(
            f"cannot listen on {where} (OAUTH2_HOST/--host): {exc.strerror or exc}; use an "
            "address of this machine, e.g. 127.0.0.1 or 0.0.0.0"
        ) from None


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    # Before the database is created or migrated and before a secret is printed.
    check_port(args.host or settings.host, args.port or settings.port)
    # the serve logging setup from here on (uvicorn applies it again in every worker)
    logging.config.dictConfig(logs.log_config(settings.log_level, settings.effective_log_format))
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
    with _metrics_directory():
        _run_uvicorn(settings, args)


@contextlib.contextmanager
def _metrics_directory() -> Iterator[None]:
    """`PROMETHEUS_MULTIPROC_DIR` for the workers (oauth2_server.metrics): the operator's,
    or a fresh private (0700) temporary directory removed when `serve` ends. Set before
    uvicorn starts the workers, which inherit it."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="oauth2-server-metrics-") as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        try:
            yield
        finally:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


def _run_uvicorn(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from oauth2_server import http_limits  # uvicorn's protocols: `serve` only

    uvicorn.run(
        "oauth2_server.app:app_from_env",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers or settings.workers,
        # X-Forwarded-* only from the configured proxies; none by default
        proxy_headers=bool(settings.forwarded_allow_ips.strip()),
        forwarded_allow_ips=settings.forwarded_allow_ips.strip(),
        # one logging setup (logs.log_config); the access line is ours (web.middleware)
        log_config=logs.log_config(settings.log_level, settings.effective_log_format),
        log_level=settings.log_level,
        access_log=False,
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


def cmd_keys_rotate(settings: Settings, args: argparse.Namespace) -> None:
    """RFC 7517: a new current signing key; refused (exit status 2) when the keyring cannot
    decrypt the current one, since a new key under a wrong keyring would bury the old."""
    who = cli_actor().details()  # the operator, in the signing_key_created row
    kid = transaction(settings, lambda session: _keystore(settings, session).rotate(session, **who))
    if args.json:
        print(json.dumps({"kid": kid}))
        return
    print(f"new signing key {kid}; the previous key stays in JWKS until the next rotation")


def cmd_keys_generate_encryption_key(settings: Settings | None, args: argparse.Namespace) -> None:
    """Needs no configuration (works under OAUTH2_ENV=production, which needs its output)."""
    entry = generate_key_spec(args.kid)
    print(json.dumps({"kid": args.kid, "entry": entry}) if args.json else entry)


def cmd_settings(settings: Settings | None, args: argparse.Namespace) -> None:
    """Needs no valid configuration: prints the table of every setting."""
    if args.json:
        rows = [{"variable": s.env, "default": s.default, "meaning": s.doc} for s in SETTINGS]
        print(json.dumps({"settings": rows}))
        return
    print(settings_table_markdown())


def add_serve(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", help="address to listen on (default OAUTH2_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (default OAUTH2_PORT)")
    serve.add_argument("--workers", type=int, help="worker processes (default OAUTH2_WORKERS)")
    serve.set_defaults(func=cmd_serve)


def add_migrate(migrate_: argparse.ArgumentParser) -> None:
    add_json(migrate_)
    migrate_.set_defaults(func=cmd_migrate)


def add_settings(settings_: argparse.ArgumentParser) -> None:
    add_json(settings_)
    settings_.set_defaults(func=cmd_settings, needs_settings=False)


def add_keys(parser: argparse.ArgumentParser) -> None:
    keys = parser.add_subparsers(dest="keys_command", required=True)
    rotate = keys.add_parser("rotate", help="new current signing key")
    add_json(rotate)
    rotate.set_defaults(func=cmd_keys_rotate)
    gen = keys.add_parser(
        "generate-encryption-key", help="print a new OAUTH2_ENCRYPTION_KEYS entry (no config)"
    )
    gen.add_argument("--kid", default="k1", help="key id of the entry (default k1)")
    add_json(gen)
    gen.set_defaults(func=cmd_keys_generate_encryption_key, needs_settings=False)


# Every command, in the order `--help` lists them: its help line, and the module (under
# oauth2_server.cli) and function that add its arguments and subcommands. A module is
# imported only for the command being run (`build_parser`): each one pulls in what its
# commands need (the audit chain, the upstream providers, the worker), which the other
# commands, and every test server's start-up, need not pay for.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("run the server (uvicorn)", "main:add_serve"),
    "migrate": ("apply database migrations", "main:add_migrate"),
    "settings": ("print the configuration table", "main:add_settings"),
    "clients": ("manage clients", "commands:register_clients"),
    "users": ("manage users", "commands:register_users"),
    "keys": ("signing and encryption keys", "main:add_keys"),
    "tokens": ("live tokens and revocation", "commands:register_tokens"),
    "audit": ("query, export and verify the audit trail", "audit:register"),
    "janitor": ("partitions, sealing, retention, expired rows", "audit_chain:register_janitor"),
    "branches": ("branches and their upstream connections", "branches:register"),
    "dev": ("development tools (never for production)", "dev:register"),
    "worker": (
        "refresh upstream tokens before they expire (issue #14; README)",
        "worker:register",
    ),
    "stats": (
        "live tokens, hourly token counts, failed client auth, upstream grants",
        "stats:register",
    ),
    "webhooks": ("webhook notifications", "webhooks:register"),
}


def command_of(argv: list[str]) -> str:
    """The command `argv` names: its first argument that is not an option (the top-level
    options take no value); "" when there is none."""
    return next((arg for arg in argv if not arg.startswith("-")), "")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `oauth2-server` parser. With `command`, only that command's arguments are
    added (its module imported); every other command is listed by name and help line,
    which is all `--help` and a parse of `command` read. Without, the whole tree."""
    parser = argparse.ArgumentParser(
        prog="oauth2-server",
        description=__doc__,
        epilog="Exit status: 0 done, 1 unexpected error, 2 usage or configuration, "
        "3 not found, 4 conflict, 5 database or provider unreachable (README).",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {metadata.version('oauth2-server')}"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show the migration tool's (Alembic's) INFO lines",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, target) in COMMANDS.items():
        child = sub.add_parser(name, help=help_)
        if command is None or command == name:
            module, function = target.split(":")
            getattr(importlib.import_module(f"oauth2_server.cli.{module}"), function)(child)
    return parser


def _fail(message: str, code: int, show_traceback: bool) -> int:
    """Print the one-line error (after the traceback of a library's or driver's error
    when OAUTH2_LOG_LEVEL=debug)."""
    if show_traceback:
        traceback.print_exc()
    line = " ".join(message.split())  # one line, whatever the message held
    print(f"oauth2-server: {line[:1000]}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `oauth2-server` console script; returns the exit status.

    Every failure is one line on stderr, `oauth2-server: …`, naming the setting or the
    resource and what to do, with a distinct status (`cli.support`: 2 usage or
    configuration, 3 not found, 4 conflict, 5 dependency unreachable, 1 unexpected).
    With OAUTH2_LOG_LEVEL=debug the traceback of an exception raised by a library or a
    driver (the database unreachable, an unexpected error) is printed first."""
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser(command_of(argv)).parse_args(argv)
    debug = os.environ.get("OAUTH2_LOG_LEVEL", "").strip().lower() == "debug"
    settings: Settings | None = None
    try:
        if getattr(args, "needs_settings", True):
            settings = Settings.from_env()
        level = settings.log_level if settings else "warning"
        logging.basicConfig(level=level.upper(), format="%(levelname)s %(name)s: %(message)s")
        logs.install_on_root()
        if not (args.verbose or debug):
            logging.getLogger("alembic").setLevel(logging.WARNING)  # "Running upgrade …"
        args.func(settings, args)
    except CommandFailed as exc:  # the operator's error, said in full: no traceback
        return _fail(str(exc), exc.code, False)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE, False)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        known = explain(exc, settings)
        if known is not None:
            return _fail(str(known), known.code, debug)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return _fail(
            f"unexpected error {type(exc).__name__}: {first} "
            "(OAUTH2_LOG_LEVEL=debug prints the traceback)",
            EXIT_UNEXPECTED,
            debug,
        )
    return 0
