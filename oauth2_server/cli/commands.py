"""CLI commands for admins: `clients`, `users` and `tokens`, added to `oauth2-server` by
`cli.main.build_parser` (as `audit` and `janitor` are, from `cli.audit`).

They call the same services as the admin API (`registry.clients`, `registry.users`,
`registry.tokens`), so the rules are the same on both paths. Changes are audited like API
changes (`admin_*` rows, `via: cli`, the OS account as `operator`, with the host, marked
`"authenticated": false`: the command line names no person, issue #11 item 2). Every command but
`clients create` and `users create` (which print text unless `--json`) prints JSON.

A client changed here is acted on by every running server from the moment the change
commits (`storage.clients`); revocations are immediate too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from oauth2_server.audit.cursors import CursorError, query_scope
from oauth2_server.cli.support import (
    CommandFailed,
    add_json,
    add_paging,
    cli_actor,
    options_body,
    print_json,
    read_password,
    transaction,
)
from oauth2_server.config import Settings
from oauth2_server.crypto.hashing import hash_secret
from oauth2_server.crypto.keyring import load_keyring
from oauth2_server.registry import clients, grants, tokens, users
from oauth2_server.registry.actor import Actor
from oauth2_server.registry.errors import RegistryError
from oauth2_server.registry.paging import MAX_PAGE, make_cursor_codec

__all__ = ["CommandFailed", "cli_actor", "register_clients", "register_tokens", "register_users"]


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
    """Repeatable options whose values may also be comma or space separated."""
    if values is None:
        return None
    return [v for value in values for v in value.replace(",", " ").split() if v]


def _uris(values: list[str] | None) -> list[str] | None:
    """Repeatable URI options (a URI may hold a comma): space separated only."""
    return None if values is None else [v for value in values for v in value.split()]


def _listing(name: str, read: Callable[[Session, Any, int], Any]) -> Callable[..., None]:
    """A `list` command: one page of the registry listing `read` (`--limit`, `--cursor`)."""
    return lambda settings, args: _page(settings, name, {}, args, read)


def _show(read: Callable[[Session, str], Any], dest: str) -> Callable[..., None]:
    """A `show` command: print `read(session, <the positional argument dest>)`."""

    def command(settings: Settings, args: Any) -> None:
        print_json(transaction(settings, lambda s: read(s, getattr(args, dest))))

    return command


def _change(settings: Settings, change: Callable[[Session, Actor], Any]) -> None:
    """Run `change(session, actor)` (a registry service call by the CLI's actor) in one
    transaction and print its JSON answer."""
    actor = cli_actor()
    print_json(transaction(settings, lambda s: change(s, actor)))


# -- clients ------------------------------------------------------------------------------


def cmd_clients_create(settings: Settings, args: Any) -> None:
    """Register a client (`registry.clients.create_client`); prints its secret once."""
    body = {
        "name": args.name,
        "client_id": args.client_id,
        "grant_types": _split(args.grant_type),
        "redirect_uris": _split(args.redirect_uri),
        "scope": " ".join(_split(args.scope) or []),
        "public": args.public,
        "token_endpoint_auth_method": args.auth_method,
        "person": args.person,
        "require_pushed_authorization_requests": args.require_par,
        "dpop_bound_access_tokens": args.dpop_bound,
        "jwks": _jwks(args.jwks),
        "jwks_uri": args.jwks_uri,
        "resources": _uris(args.resource),
    }
    actor = cli_actor()
    client, secret = transaction(settings, lambda s: clients.create_client(s, actor, body))
    shown = (
        "name",
        "token_endpoint_auth_method",
        "grant_types",
        "redirect_uris",
        "scope",
        "person",
        "resources",
    )
    result = {
        "client_id": client["client_id"],
        "client_secret": secret,
        **{key: client[key] for key in shown},
    }
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        if value is not None:
            print(f"{key}: {' '.join(value) if isinstance(value, list) else value}")
    if secret:
        print("The client secret is shown only this once.")


def cmd_clients_update(settings: Settings, args: Any) -> None:
    body = options_body(
        args,
        {
            "name": "name",
            "active": "active",
            "person": "person",
            "require_par": "require_pushed_authorization_requests",
            "dpop_bound": "dpop_bound_access_tokens",
        },
    )
    for dest, name in (
        ("grant_type", "grant_types"),
        ("redirect_uri", "redirect_uris"),
        ("branch", "branches"),
    ):
        if getattr(args, dest) is not None:
            body[name] = _split(getattr(args, dest))
    if args.scope is not None:
        body["scope"] = " ".join(_split(args.scope) or [])
    if args.jwks is not None:
        body["jwks"] = _jwks(args.jwks)
    if args.jwks_uri is not None:
        body["jwks_uri"] = args.jwks_uri
    if args.resource is not None:
        body["resources"] = _uris(args.resource)
    _change(settings, lambda s, actor: clients.update_client(s, actor, args.client_id, body))


def _jwks(value: str | None) -> Any:
    """`--jwks`: a JWK Set as JSON text, or `@PATH` of a file holding it (at most 64 KiB;
    `registry.client_keys` checks the rest). Raises CommandFailed."""
    if value is None:
        return None
    try:
        if value.startswith("@"):
            with open(value[1:], encoding="utf-8") as file:
                value = file.read(65_537)
        if len(value) > 65_536:
            raise ValueError("longer than 64 KiB")
        return json.loads(value)
    except (OSError, ValueError) as exc:
        raise CommandFailed(f"--jwks: not a readable JSON JWK Set ({exc})") from None


def cmd_clients_rotate_secret(settings: Settings, args: Any) -> None:
    _change(settings, lambda s, actor: clients.rotate_secret(s, actor, args.client_id))
    print("The client secret is shown only this once.", file=sys.stderr)


def cmd_clients_delete(settings: Settings, args: Any) -> None:
    _change(settings, lambda s, actor: clients.delete_client(s, actor, args.client_id))


# -- users --------------------------------------------------------------------------------


def _password_hash(args: Any, prompt: str) -> str:
    """The argon2id hash of the password read (`read_password`), checked first by the
    same rule as the admin API's (`registry.users.check_password`; exit status 2)."""
    password = read_password(args, prompt)
    try:
        users.check_password(password)
    except RegistryError as exc:
        raise CommandFailed(exc.description) from None
    return hash_secret(password)


def cmd_users_create(settings: Settings, args: Any) -> None:
    """Create a user (`registry.users.create_user`): usernames unique ignoring case."""
    hashed = _password_hash(args, "password: ")
    body = {"username": args.username, "subject": args.subject}
    actor = cli_actor()
    user = transaction(settings, lambda s: users.create_user(s, actor, body, hashed))
    result = {"username": user["username"], "subject": user["subject"]}
    print(
        json.dumps(result)
        if args.json
        else f"created user {user['username']} (sub {user['subject']})"
    )


def cmd_users_update(settings: Settings, args: Any) -> None:
    body = options_body(args, {"username": "username", "active": "active"})
    _change(settings, lambda s, actor: users.update_user(s, actor, args.subject, body))


def cmd_users_deactivate(settings: Settings, args: Any) -> None:
    body = {"active": False}
    _change(settings, lambda s, actor: users.update_user(s, actor, args.subject, body))


def cmd_users_set_password(settings: Settings, args: Any) -> None:
    hashed = _password_hash(args, "new password: ")
    revoke = args.revoke_tokens
    _change(settings, lambda s, actor: users.set_password(s, actor, args.subject, hashed, revoke))


def cmd_users_revoke_grant(settings: Settings, args: Any) -> None:
    """Withdraw a user's grant to a client (`registry.grants.revoke_grant`)."""
    _change(settings, lambda s, actor: grants.revoke_grant(s, actor, args.subject, args.client_id))


# -- tokens -------------------------------------------------------------------------------

_CRITERIA = {name: name for name in tokens.CRITERIA}


def cmd_tokens_list(settings: Settings, args: Any) -> None:
    criteria = options_body(args, _CRITERIA)
    _page(
        settings,
        "tokens",
        {"kind": args.kind, **criteria},
        args,
        lambda s, after, limit: tokens.list_tokens(s, criteria, args.kind, after, limit),
    )


def cmd_tokens_revoke(settings: Settings, args: Any) -> None:
    body = options_body(args, {"jti": "jti", "family_id": "family_id", **_CRITERIA})
    _change(settings, lambda s, actor: tokens.revoke(s, actor, body))


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


PERSON_HELP = (
    "the named person an admin client belongs to, e.g. 'Ada Lovelace <ada@example.com>': "
    "audit rows of its tokens name them"
)
REQUIRE_PAR_HELP = "authorization requests only through /oauth2/par (RFC 9126)"
DPOP_BOUND_HELP = "every token request must carry a DPoP proof (RFC 9449)"
JWKS_HELP = "private_key_jwt: the public JWK Set, as JSON or @FILE (RFC 7517)"
JWKS_URI_HELP = "private_key_jwt: https URL of the client's JWK Set"
RESOURCE_HELP = "a resource indicator it may request, an absolute URI (RFC 8707; repeatable)"
# The positional argument naming one resource, per key.
KEY_HELP = {"client_id": "the client's client_id", "subject": "the user's subject (token `sub`)"}


def _list_and_show(
    group: Any, name: str, listing: Callable[..., Any], show: Callable[..., Any], key: str
) -> str:
    """Add a resource's `list` (JSON, paged) and `show <key>` commands; returns the help
    text of the `key` argument (`key_help`), for the resource's other commands."""
    key_help = KEY_HELP[key]
    add_paging(
        _json(group.add_parser("list", help=f"list {name} (JSON, paged)"), _listing(name, listing))
    )
    shown = group.add_parser("show", help=f"show one {name[:-1]}")
    _json(shown, _show(show, key)).add_argument(key, help=key_help)
    return key_help


def register_clients(parser: argparse.ArgumentParser) -> None:
    """`clients create|list|show|update|rotate-secret|delete` (`parser`: `clients`)."""
    clients_group = parser.add_subparsers(dest="clients_command", required=True)
    create = clients_group.add_parser("create", help="register a client; prints its secret once")
    create.add_argument("--name", required=True, help="display name (consent page, listings)")
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
        choices=["client_secret_basic", "client_secret_post", "private_key_jwt"],
        help="confidential client authentication (default client_secret_basic); "
        "private_key_jwt (RFC 7523) needs --jwks or --jwks-uri and has no secret",
    )
    create.add_argument("--jwks", help=JWKS_HELP)
    create.add_argument("--jwks-uri", help=JWKS_URI_HELP)
    create.add_argument("--resource", action="append", help=RESOURCE_HELP)
    create.add_argument(
        "--client-id", help="id to use (A-Z a-z 0-9 . _ ~ -), never a user's subject"
    )
    create.add_argument("--person", help=PERSON_HELP)
    create.add_argument("--require-par", action="store_true", help=REQUIRE_PAR_HELP)
    create.add_argument("--dpop-bound", action="store_true", help=DPOP_BOUND_HELP)
    add_json(create)
    create.set_defaults(func=cmd_clients_create)
    client_id = _list_and_show(
        clients_group, "clients", clients.list_clients, clients.get_client, "client_id"
    )
    c = clients_group.add_parser("update", help="change a client (options given replace)")
    _json(c, cmd_clients_update).add_argument("client_id", help=client_id)
    c.add_argument("--name", help="new display name")
    c.add_argument("--grant-type", action="append", help="grant types (repeatable)")
    c.add_argument("--redirect-uri", action="append", help="exact redirect URIs (repeatable)")
    c.add_argument("--scope", action="append", help="registered scopes (space separated)")
    c.add_argument("--branch", action="append", help="branch ids it may broker (`*`: all)")
    c.add_argument("--person", help=PERSON_HELP + "; '' registers it to no one")
    c.add_argument("--require-par", action=argparse.BooleanOptionalAction, help=REQUIRE_PAR_HELP)
    c.add_argument("--dpop-bound", action=argparse.BooleanOptionalAction, help=DPOP_BOUND_HELP)
    c.add_argument("--jwks", help=JWKS_HELP + "; replaces the jwks_uri")
    c.add_argument("--jwks-uri", help=JWKS_URI_HELP + "; replaces the jwks")
    c.add_argument("--resource", action="append", help=RESOURCE_HELP + "; '' for none")
    _active(c)
    c = clients_group.add_parser("rotate-secret", help="new client secret, printed once")
    _json(c, cmd_clients_rotate_secret).add_argument("client_id", help=client_id)
    c = clients_group.add_parser("delete", help="revoke a client's tokens and delete it")
    _json(c, cmd_clients_delete).add_argument("client_id", help=client_id)


def register_users(parser: argparse.ArgumentParser) -> None:
    """`users create|list|show|deactivate|update|set-password|revoke-grant` (`parser`:
    `users`)."""
    users_group = parser.add_subparsers(dest="users_command", required=True)
    ucreate = users_group.add_parser("create", help="create a user")
    ucreate.add_argument("--username", required=True, help="the name the user signs in with")
    ucreate.add_argument("--password", help="default: read from stdin or prompt")
    ucreate.add_argument(
        "--subject", help="token sub to keep (A-Z a-z 0-9 . _ ~ -), never a client_id"
    )
    add_json(ucreate)
    ucreate.set_defaults(func=cmd_users_create)
    subject = _list_and_show(users_group, "users", users.list_users, users.get_user, "subject")
    u = users_group.add_parser("deactivate", help="deactivate a user and revoke their tokens")
    _json(u, cmd_users_deactivate).add_argument("subject", help=subject)
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
    u = users_group.add_parser(
        "revoke-grant",
        help="withdraw a user's grant to a client: revoke its tokens, forget the consent",
    )
    _json(u, cmd_users_revoke_grant).add_argument("subject", help=subject)
    u.add_argument("client_id", help="the client the grant was given to")


def register_tokens(parser: argparse.ArgumentParser) -> None:
    """`tokens list|revoke`, by client, user or branch (or one `jti` or family; `parser`:
    `tokens`)."""
    tokens_group = parser.add_subparsers(dest="tokens_command", required=True)
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
