"""CLI commands for admins: the admin API's operations without HTTP (`clients`, `users`,
`tokens`), registered into `oauth2-server` by `cli.build_parser` with `audit` and
`janitor` (`admin.audit_commands`). Every command prints JSON. Changes are audited like
API changes (`admin_*` rows, `via: cli`, the OS user as `operator`).

A client changed here is acted on by every running server from the moment the change
commits (`storage.client_registry`); revocations are immediate too.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from typing import Any

from oauth2_server.admin import clients, tokens, users
from oauth2_server.admin.http import MAX_PAGE, Actor, AdminError, make_cursor_codec
from oauth2_server.audit.cursors import CursorError, query_scope
from oauth2_server.audit.log import RequestContext
from oauth2_server.cli import audit as audit_commands
from oauth2_server.cli.support import (
    CommandFailed,
    add_json,
    add_paging,
    options_body,
    print_json,
    transaction,
)
from oauth2_server.config import Settings
from oauth2_server.crypto.hashing import hash_secret
from oauth2_server.crypto.keyring import load_keyring

__all__ = ["CommandFailed", "cli_actor", "register"]


def cli_actor() -> Actor:
    """The actor of an admin change made from the command line: audit rows get
    `client_id` null, `details.via` "cli" and `details.operator` the OS user."""
    return Actor(None, None, RequestContext(), via="cli", operator=getpass.getuser())


def _page(settings: Settings, name: str, filters: dict[str, Any], args: Any, call: Any) -> None:
    """Print one page of a listing; its `next_cursor` continues with --cursor."""
    if not 1 <= args.limit <= MAX_PAGE:
        raise CommandFailed(f"--limit must be from 1 to {MAX_PAGE}")
    codec = make_cursor_codec(load_keyring(settings))
    scope = query_scope(name, filters)
    try:
        after = codec.decode(args.cursor, scope) if args.cursor else None
    except CursorError as exc:
        raise CommandFailed(f"cursor: {exc}") from None
    page = transaction(settings, lambda s: call(s, after, args.limit))
    position = page.pop("next_position")
    page["next_cursor"] = codec.encode(scope, position) if position else None
    print_json(page)


def _split(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [v for value in values for v in value.replace(",", " ").split() if v]


# -- clients ------------------------------------------------------------------------------


def cmd_clients_list(settings: Settings, args: Any) -> None:
    _page(settings, "clients", {}, args, clients.list_clients_op)


def cmd_clients_show(settings: Settings, args: Any) -> None:
    print_json(transaction(settings, lambda s: clients.get_client_op(s, args.client_id)))


def cmd_clients_update(settings: Settings, args: Any) -> None:
    body = options_body(args, {"name": "name", "active": "active"})
    for dest, name in (
        ("grant_type", "grant_types"),
        ("redirect_uri", "redirect_uris"),
        ("branch", "branches"),
    ):
        if getattr(args, dest) is not None:
            body[name] = _split(getattr(args, dest))
    if args.scope is not None:
        body["scope"] = " ".join(_split(args.scope) or [])
    actor = cli_actor()
    print_json(
        transaction(settings, lambda s: clients.update_client_op(s, actor, args.client_id, body))
    )


def cmd_clients_rotate_secret(settings: Settings, args: Any) -> None:
    actor = cli_actor()
    secret, hashed = asyncio.run(clients.new_secret_hash())
    result = transaction(
        settings, lambda s: clients.rotate_secret_op(s, actor, args.client_id, hashed)
    )
    print_json({**result, "client_secret": secret})
    print("The client secret is shown only this once.", file=sys.stderr)


def cmd_clients_delete(settings: Settings, args: Any) -> None:
    actor = cli_actor()
    print_json(transaction(settings, lambda s: clients.delete_client_op(s, actor, args.client_id)))


# -- users --------------------------------------------------------------------------------


def cmd_users_list(settings: Settings, args: Any) -> None:
    _page(settings, "users", {}, args, users.list_users_op)


def cmd_users_show(settings: Settings, args: Any) -> None:
    print_json(transaction(settings, lambda s: users.get_user_op(s, args.subject)))


def cmd_users_update(settings: Settings, args: Any) -> None:
    body = options_body(args, {"username": "username", "active": "active"})
    actor = cli_actor()
    print_json(transaction(settings, lambda s: users.update_user_op(s, actor, args.subject, body)))


def cmd_users_deactivate(settings: Settings, args: Any) -> None:
    actor = cli_actor()
    body = {"active": False}
    print_json(transaction(settings, lambda s: users.update_user_op(s, actor, args.subject, body)))


def cmd_users_set_password(settings: Settings, args: Any) -> None:
    password = args.password
    if password is None:
        password = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else None
    if password is None:
        password = getpass.getpass("new password: ")
    try:
        users.check_password(password)
    except AdminError as exc:
        raise CommandFailed(exc.description) from None
    hashed = hash_secret(password)
    actor = cli_actor()
    revoke = args.revoke_tokens
    print_json(
        transaction(
            settings, lambda s: users.set_password_op(s, actor, args.subject, hashed, revoke)
        )
    )


# -- tokens -------------------------------------------------------------------------------

_CRITERIA = {"client_id": "client_id", "user": "user", "branch_id": "branch_id"}


def cmd_tokens_list(settings: Settings, args: Any) -> None:
    criteria = options_body(args, _CRITERIA)
    _page(
        settings,
        "tokens",
        {"kind": args.kind, **criteria},
        args,
        lambda s, after, limit: tokens.list_tokens_op(s, criteria, args.kind, after, limit),
    )


def cmd_tokens_revoke(settings: Settings, args: Any) -> None:
    body = options_body(args, {"jti": "jti", "family_id": "family_id", **_CRITERIA})
    actor = cli_actor()
    print_json(transaction(settings, lambda s: tokens.revoke_op(s, actor, body)))


# -- registration ---------------------------------------------------------------------


def _active(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--active", dest="active", action="store_const", const=True, help="make it active"
    )
    group.add_argument(
        "--inactive",
        dest="active",
        action="store_const",
        const=False,
        help="make it inactive (its tokens stop working)",
    )


def _json(parser: argparse.ArgumentParser, func: Any) -> argparse.ArgumentParser:
    """Every admin command prints JSON; `--json` is accepted for uniformity."""
    add_json(parser, always=True)
    parser.set_defaults(func=func)
    return parser


def register(sub: Any, clients_group: Any, users_group: Any) -> None:
    """Add the admin and audit commands to `oauth2-server`'s parser (`sub`: top-level
    subparsers; `clients_group`/`users_group`: those commands' subparsers)."""
    client_id = "the client's client_id"
    c = _json(clients_group.add_parser("list", help="list clients (JSON, paged)"), cmd_clients_list)
    add_paging(c)
    c = _json(clients_group.add_parser("show", help="show one client"), cmd_clients_show)
    c.add_argument("client_id", help=client_id)
    c = clients_group.add_parser("update", help="change a client (options given replace)")
    _json(c, cmd_clients_update).add_argument("client_id", help=client_id)
    c.add_argument("--name", help="new display name")
    c.add_argument("--grant-type", action="append", help="grant types (repeatable)")
    c.add_argument("--redirect-uri", action="append", help="exact redirect URIs (repeatable)")
    c.add_argument("--scope", action="append", help="registered scopes (space separated)")
    c.add_argument("--branch", action="append", help="branch ids it may broker (`*`: all)")
    _active(c)
    c = clients_group.add_parser("rotate-secret", help="new client secret, printed once")
    _json(c, cmd_clients_rotate_secret).add_argument("client_id", help=client_id)
    c = clients_group.add_parser("delete", help="revoke a client's tokens and delete it")
    _json(c, cmd_clients_delete).add_argument("client_id", help=client_id)

    subject = "the user's subject (token `sub`)"
    u = _json(users_group.add_parser("list", help="list users (JSON, paged)"), cmd_users_list)
    add_paging(u)
    for name, func, help_ in (
        ("show", cmd_users_show, "show one user"),
        ("deactivate", cmd_users_deactivate, "deactivate a user and revoke their tokens"),
    ):
        _json(users_group.add_parser(name, help=help_), func).add_argument("subject", help=subject)
    u = _json(
        users_group.add_parser("update", help="rename or (de)activate a user"), cmd_users_update
    )
    u.add_argument("subject", help=subject)
    u.add_argument("--username", help="new user name")
    _active(u)
    u = users_group.add_parser("set-password", help="set a user's password")
    _json(u, cmd_users_set_password).add_argument("subject", help=subject)
    u.add_argument("--password", help="default: read from stdin or prompt")
    u.add_argument("--revoke-tokens", action="store_true", help="also revoke the user's tokens")

    tokens_group = sub.add_parser("tokens", help="live tokens and revocation").add_subparsers(
        dest="tokens_command", required=True
    )
    criteria = {
        "--client-id": "tokens issued to this client_id",
        "--user": "tokens of this user subject",
        "--branch-id": "tokens brokered for this branch",
    }
    t = tokens_group.add_parser("list", help="live tokens by client, user or branch")
    _json(t, cmd_tokens_list)
    for option, help_ in criteria.items():
        t.add_argument(option, help=help_)
    t.add_argument("--kind", choices=["access", "refresh"], default="access", help="default access")
    add_paging(t)
    t = tokens_group.add_parser("revoke", help="revoke by one of the options; prints the count")
    _json(t, cmd_tokens_revoke)
    group = t.add_mutually_exclusive_group(required=True)
    group.add_argument("--jti", help="one access token, by its `jti`")
    group.add_argument("--family-id", help="one grant: a refresh token family")
    for option, help_ in criteria.items():
        group.add_argument(option, help=help_)
    audit_commands.register(sub)
