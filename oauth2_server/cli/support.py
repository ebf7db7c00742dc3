"""Plumbing shared by the admin and audit CLI commands: a database session per command,
errors for the operator (one line, a distinct exit status), JSON output.

Exit statuses of `oauth2-server` (README "Exit statuses"):

    0  done
    1  an unexpected error (a bug: OAUTH2_LOG_LEVEL=debug prints its traceback), or
       `audit verify` found the chain altered
    2  usage or configuration: a bad option or setting, a file the settings point at that
       cannot be used, a database not migrated, a keyring that cannot decrypt the database
    3  not found: the client, user, branch or token named does not exist
    4  conflict: the name is taken, the state forbids it, the port is in use
    5  a dependency is unreachable: the database or an upstream provider
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pwd
import socket
import sqlite3
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from oauth2_server.audit import query as audit_query
from oauth2_server.audit.cursors import CursorError
from oauth2_server.audit.log import RequestContext
from oauth2_server.config import Settings, ensure_data_dir
from oauth2_server.crypto.keyring import DecryptionError, keyring_source
from oauth2_server.db import migrate
from oauth2_server.db.engine import create_engine, create_sessionmaker
from oauth2_server.registry.actor import Actor
from oauth2_server.registry.errors import RegistryError
from oauth2_server.storage.errors import DatabaseUnavailable, describe, is_unavailable

T = TypeVar("T")
log = logging.getLogger("oauth2_server.cli")


def os_account() -> str:
    """The OS account this process runs as (its effective uid's name, or the uid when
    it has none). Not `getpass.getuser()`, which believes `LOGNAME` and `USER`."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def cli_actor() -> Actor:
    """The actor of an admin change or audit read made from the command line: audit rows
    get `client_id` null, `details.via` "cli", `details.operator` the OS account,
    `details.host` this host's name and `details.authenticated` false."""
    return Actor(
        None, None, RequestContext(), via="cli", operator=os_account(), host=socket.gethostname()
    )


Sessions = async_sessionmaker[AsyncSession]


EXIT_UNEXPECTED = 1
EXIT_USAGE = 2  # usage or configuration (argparse's own status for a bad option)
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_UNAVAILABLE = 5


class CommandFailed(Exception):
    """A command that failed with a one-line message for the operator and an exit status
    (`code`, default 2: usage or configuration; the module doc lists them)."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def exit_code_for(exc: BaseException) -> int:
    """The exit status of a domain error whose message is for the operator: an HTTP-like
    `status` or admin `error` code when it has one, else what its message says."""
    status = getattr(exc, "status", None)
    error = getattr(exc, "error", None)
    if status == 404 or error == "not_found":
        return EXIT_NOT_FOUND
    if status == 409 or error == "conflict":
        return EXIT_CONFLICT
    if isinstance(status, int) and status >= 500:
        return EXIT_UNAVAILABLE
    text = str(exc)
    if " not found" in text:
        return EXIT_NOT_FOUND
    if "already exists" in text or " is taken" in text or "already used" in text:
        return EXIT_CONFLICT
    return EXIT_USAGE


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what it wraps (SQLAlchemy's `.orig`, `__cause__`, `__context__`), at most 8."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in found and len(found) < 8:
        found.append(current)
        wrapped = current.orig if isinstance(current, DBAPIError) else None
        current = wrapped or current.__cause__ or current.__context__
    return found


def _database(settings: Settings) -> tuple[str, str]:
    """(`host:port/name`, `name`) of the configured database, without user or password."""
    url = make_url(settings.database_url)
    if settings.is_sqlite:
        return str(url.database or "")[:200], str(url.database or "")
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    return f"{where}/{url.database or ''}"[:200], str(url.database or "")[:100]


def explain(exc: BaseException, settings: Settings | None) -> CommandFailed | None:
    """A start-up or command failure as one line naming the setting or the resource and
    what to do, with its exit status; None for an error this does not recognise (a bug).

    Recognised: a keyring that cannot decrypt the database (2); PostgreSQL refusing the
    login or missing the database (2); a SQLite file that cannot be opened or created (2);
    the database unreachable (5); an upstream provider unreachable (5)."""
    causes = _causes(exc)
    if any(isinstance(c, DecryptionError) for c in causes) and settings is not None:
        return keyring_mismatch(settings)
    # Raised only by the upstream client; a command that never loaded it (httpx, ~0.1 s of
    # every command's start-up) cannot have met it.
    upstream = sys.modules.get("oauth2_server.upstream.client")
    if upstream and any(isinstance(c, upstream.UpstreamUnavailable) for c in causes):
        return CommandFailed(
            f"the upstream provider is unreachable: {describe(exc)}; try again later, or "
            "check the OAUTH2_UPSTREAM_* endpoints",
            EXIT_UNAVAILABLE,
        )
    if settings is None:
        return None
    where, name = _database(settings)
    for cause in causes:
        if isinstance(cause, asyncpg.InvalidCatalogNameError):
            return CommandFailed(
                f"database {name!r} does not exist on {where.rsplit('/', 1)[0]} "
                f"(OAUTH2_DATABASE_URL): create it (`createdb {name}`) and run "
                "`oauth2-server migrate`, or fix the URL"
            )
        if isinstance(
            cause, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
        ):
            return CommandFailed(
                f"PostgreSQL at {where} refused the login (OAUTH2_DATABASE_URL): "
                f"{describe(cause)}; check the user name and password in the URL"
            )
        if isinstance(cause, sqlite3.DatabaseError) and settings.is_sqlite:
            return CommandFailed(
                f"the SQLite database {where} cannot be used (OAUTH2_DATABASE_URL): "
                f"{describe(cause)}; make its directory exist and be writable by this user, "
                "or set OAUTH2_DATA_DIR or OAUTH2_DATABASE_URL"
            )
    if isinstance(exc, DatabaseUnavailable) or is_unavailable(exc):
        return CommandFailed(
            f"the database at {where} is unreachable (OAUTH2_DATABASE_URL): {describe(exc)}; "
            "start it or fix the host and port in the URL",
            EXIT_UNAVAILABLE,
        )
    return None


def keyring_mismatch(settings: Settings, missing: bool = False) -> CommandFailed:
    """The keyring cannot decrypt what the database holds (its file lost or replaced):
    one line naming the file or variable and what to do (exit status 2)."""
    source = keyring_source(settings)
    problem = (
        "is missing, but the database holds keys encrypted under it"
        if missing
        else "cannot decrypt this database's signing key (lost or replaced key file?)"
    )
    return CommandFailed(
        f"{source} {problem}: restore the keyring file the database was made with, or "
        "point OAUTH2_DEV_KEY_FILE or OAUTH2_ENCRYPTION_KEYS at that key"
    )


def prepare_database(settings: Settings) -> None:
    """Before opening the embedded default (SQLite in OAUTH2_DATA_DIR), create the data
    directory (0700). Raises ConfigError naming OAUTH2_DATA_DIR when that fails."""
    if settings.is_sqlite:
        path = make_url(settings.database_url).database or ""
        if path and os.path.dirname(os.path.abspath(path)) == settings.data_dir:
            if not os.path.exists(path) and os.path.exists("oauth2_server.db"):
                log.warning(
                    "./oauth2_server.db is an earlier version's database in the current "
                    "directory; this server keeps its state in %s (OAUTH2_DATA_DIR): move "
                    "oauth2_server.db and oauth2_server.dev-keys.json there to keep using it",
                    settings.data_dir,
                )
            ensure_data_dir(settings.data_dir)


async def with_sessions(settings: Settings, call: Callable[[Sessions], Any]) -> Any:
    """Open the database (SQLite is migrated; PostgreSQL must be at head) and run `call`."""
    prepare_database(settings)
    engine = create_engine(settings.database_url, 2)
    try:
        if settings.is_sqlite:
            await migrate.upgrade(engine)
        else:
            await migrate.require_head(engine)
        return await call(create_sessionmaker(engine))
    finally:
        await engine.dispose()


def run_async(
    settings: Settings,
    call: Callable[[Sessions], Any],
    errors: tuple[type[Exception], ...] = (),
) -> Any:
    """`with_sessions` on a new event loop. An un-migrated database, the registry
    services' errors (`field: description`, exit status 2, 3 or 4), audit query errors,
    and the command's own `errors` (domain exceptions whose message is for the operator)
    become CommandFailed."""
    try:
        return asyncio.run(with_sessions(settings, call))
    except migrate.DatabaseNotMigrated as exc:
        raise CommandFailed(str(exc)) from None
    except errors as exc:
        raise CommandFailed(str(exc), exit_code_for(exc)) from None
    except RegistryError as exc:
        raise CommandFailed(f"{exc.field}: {exc.description}", exit_code_for(exc)) from None
    except (audit_query.AuditQueryError, CursorError) as exc:
        raise CommandFailed(f"{getattr(exc, 'field', 'cursor')}: {exc}") from None


def transaction(
    settings: Settings, call: Callable[[Session], T], errors: tuple[type[Exception], ...] = ()
) -> T:
    """Run a sync storage call in one committed transaction (`run_async`'s errors)."""

    async def go(sessions: Sessions) -> T:
        async with sessions() as session, session.begin():
            return await session.run_sync(call)

    return run_async(settings, go, errors)


def read_password(args: Any, prompt: str) -> str:
    """`--password`, else one line of stdin when it is not a terminal, else a prompt."""
    if args.password is not None:
        return str(args.password)
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    import getpass

    return getpass.getpass(prompt)


def quiet_broken_pipe() -> None:
    """stdout's reader went away (`… | head`): stop quietly, exit status 1."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(1)


def print_json(value: Any) -> None:
    """Print `value` as indented JSON (quietly stop if stdout was closed)."""
    try:
        print(json.dumps(value, indent=2, default=str), flush=True)
    except BrokenPipeError:
        quiet_broken_pipe()


def options_body(args: Any, names: dict[str, str]) -> dict[str, Any]:
    """JSON-body-like dict from the options given (names: option dest → field)."""
    body: dict[str, Any] = {}
    for dest, name in names.items():
        value = getattr(args, dest, None)
        if value is not None:
            body[name] = value
    return body


def add_paging(parser: argparse.ArgumentParser, default: int = 50) -> None:
    """`--limit` and `--cursor` of a paged listing."""
    parser.add_argument("--limit", type=int, default=default, help=f"rows per page ({default})")
    parser.add_argument("--cursor", help="next_cursor printed by the previous page")


def add_json(parser: argparse.ArgumentParser, always: bool = False) -> None:
    """`--json` on a command that prints data (`always`: it prints JSON anyway, and the
    option is accepted so scripts can pass it to every command)."""
    help_ = "print JSON (this command always does)" if always else "print JSON for scripts"
    parser.add_argument("--json", action="store_true", help=help_)
