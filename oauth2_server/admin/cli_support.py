"""Plumbing shared by the admin and audit CLI commands: a database session per command,
errors for the operator, JSON output."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from oauth2_server import audit_query
from oauth2_server.admin.http import AdminError
from oauth2_server.config import Settings
from oauth2_server.cursors import CursorError
from oauth2_server.db import migrate
from oauth2_server.db.engine import create_engine, create_sessionmaker

T = TypeVar("T")
Sessions = async_sessionmaker[AsyncSession]


class CommandFailed(Exception):
    """A command that failed with a message for the operator (exit status 2)."""


async def with_sessions(settings: Settings, call: Callable[[Sessions], Any]) -> Any:
    """Open the database (SQLite is migrated; PostgreSQL must be at head) and run `call`."""
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
    """`with_sessions` on a new event loop. An un-migrated database, admin and audit
    query errors, and the command's own `errors` (domain exceptions whose message is for
    the operator) become CommandFailed."""
    try:
        return asyncio.run(with_sessions(settings, call))
    except (migrate.DatabaseNotMigrated, *errors) as exc:
        raise CommandFailed(str(exc)) from None
    except AdminError as exc:
        raise CommandFailed(f"{exc.field or exc.error}: {exc.description}") from None
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
    parser.add_argument("--limit", type=int, default=default)
    parser.add_argument("--cursor", help="next_cursor printed by the previous page")
