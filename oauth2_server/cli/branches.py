"""`oauth2-server branches …`: branches, which clients may use them, and their upstream
connections (DESIGN.md "Upstream brokering").

    branches create BRANCH --name NAME [--contact-email E] [--google-account-id A]
                                        [--google-location-id L]
    branches list | status [BRANCH] | grants [--provider P] | activate BRANCH | deactivate BRANCH
    branches grant BRANCH --client CLIENT_ID      (BRANCH may be '*': every branch)
    branches ungrant BRANCH --client CLIENT_ID
    branches connect BRANCH --provider google     (prints the authorization URL)
    branches disconnect BRANCH --provider google [--force]

Changes are audited (`admin_branch_*` rows with `via: cli` and the OS user as
`operator`; `upstream_unlinked` on disconnect). `--json` prints JSON for scripts.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from oauth2_server.cli.commands import cli_actor
from oauth2_server.cli.support import (
    CommandFailed,
    Sessions,
    options_body,
    run_async,
    transaction,
)
from oauth2_server.config import Settings
from oauth2_server.crypto.keyring import load_keyring
from oauth2_server.registry import branches as registry
from oauth2_server.storage import branches as branch_storage
from oauth2_server.storage import utcnow
from oauth2_server.storage.upstream import ConnectionStatus
from oauth2_server.upstream.connect import ConnectError, begin_connection
from oauth2_server.upstream.health import grant_health, list_grants
from oauth2_server.upstream.providers import (
    ProviderNotConfigured,
    UnknownProvider,
    load_provider,
    provider_names,
)
from oauth2_server.upstream.service import UpstreamService

T = TypeVar("T")

# Failures whose message is for the operator: exit status 2 with that message.
_COMMAND_ERRORS = (ConnectError, ProviderNotConfigured, UnknownProvider)


def _run(settings: Settings, call: Callable[[Sessions], Awaitable[T]]) -> T:
    return run_async(settings, call, _COMMAND_ERRORS)


def _transaction(settings: Settings, call: Callable[[Session], T]) -> T:
    return transaction(settings, call, _COMMAND_ERRORS)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _print(args: argparse.Namespace, value: Any, text: str) -> None:
    print(json.dumps(value, default=str) if args.json else text)


_SHOWN = ("branch_id", "name", "contact_email", "google_account_id", "google_location_id")


def _branch_dict(branch: Any, clients: list[str] | None = None) -> dict[str, Any]:
    """What `branches create` and `list` print of a branch (a BranchRecord, or the JSON
    of `registry.branches`, which carries its clients)."""
    item = branch if isinstance(branch, dict) else asdict(branch)
    shown = {key: item[key] for key in (*_SHOWN, "active")}
    return {**shown, "clients": item.get("clients", []) if clients is None else clients}


def cmd_create(settings: Settings, args: argparse.Namespace) -> None:
    fields = ("name", "contact_email", "google_account_id", "google_location_id")
    body = {"branch_id": args.branch, **options_body(args, {f: f for f in fields})}
    actor = cli_actor()
    created = _transaction(settings, lambda db: registry.create_branch(db, actor, body))
    _print(args, _branch_dict(created), f"created branch {created['branch_id']}")


def cmd_list(settings: Settings, args: argparse.Namespace) -> None:
    def call(db: Session) -> tuple[list[branch_storage.BranchRecord], dict[str, list[str]]]:
        return branch_storage.list_branches(db), branch_storage.branch_grants(db)

    branches, grants = _transaction(settings, call)
    rows = [_branch_dict(b, grants.get(b.branch_id, [])) for b in branches]
    if args.json:
        print(json.dumps({"branches": rows, "all_branches_clients": grants.get("*", [])}))
        return
    for row in rows:
        state = "active" if row["active"] else "inactive"
        clients = ", ".join(row["clients"]) or "-"
        print(f"{row['branch_id']}\t{row['name']}\t{state}\tclients: {clients}")
    if grants.get("*"):
        print(f"every branch: {', '.join(grants['*'])}")


def cmd_status(settings: Settings, args: argparse.Namespace) -> None:
    def call(db: Session) -> list[ConnectionStatus]:
        return registry.connection_status(db, args.branch or None)

    now = utcnow()
    rows = [
        {
            "branch_id": s.branch_id,
            "name": s.name,
            "active": s.active,
            "provider": s.provider,
            "connected": s.provider is not None,
            "account_email": s.account_email,
            "scope": s.scope,
            "access_expires_at": _iso(s.access_expires_at),
            "last_refreshed_at": _iso(s.last_refreshed_at),
            "needs_consent": s.needs_consent,
            "consent_error": s.consent_error,
            "grant_shared_by": s.branches_sharing,
            # README "Upstream provider faults": a refresh at the provider right now, or
            # one whose process stopped mid-call (the next refresh takes it over).
            "refresh": s.refresh_state(now),
            "refresh_started_at": _iso(s.refresh_started_at),
            "refresh_lease_until": _iso(s.refresh_lease_until),
            "refresh_failures": s.refresh_failures,
            "last_refresh_error": s.last_refresh_error,
            "last_refresh_error_at": _iso(s.last_refresh_error_at),
            # issue #14 item 2: ok | refresh_failing | needs_consent, last and next refresh
            "health": grant_health(s, settings.upstream_refresh_ahead) if s.provider else None,
        }
        for s in _transaction(settings, call)
    ]
    if args.json:
        print(json.dumps({"branches": rows}))
        return
    for row in rows:
        if not row["connected"]:
            print(f"{row['branch_id']}\tnot connected")
            continue
        health = row["health"]
        flag = health["state"].upper() if health["state"] != "ok" else "ok"
        print(
            f"{row['branch_id']}\t{row['provider']}\t{row['account_email'] or '-'}\t{flag}\n"
            f"    scopes: {row['scope']}\n"
            f"    access token expires: {row['access_expires_at']}  "
            f"last refresh: {row['last_refreshed_at'] or 'never'}  "
            f"next refresh: {health['next_refresh_at'] or '-'}  "
            f"grant shared by {row['grant_shared_by']} branch(es)"
            + (f"\n    reason: {row['consent_error']}" if row["needs_consent"] else "")
            + _refresh_lines(row)
        )


def _refresh_lines(row: dict[str, Any]) -> str:
    """`branches status` lines about the refresh mark and the last failed refresh."""
    lines = ""
    if row["refresh"] == "in_progress":
        lines += f"\n    refresh in progress since {row['refresh_started_at']}"
    elif row["refresh"] == "interrupted":
        lines += (
            f"\n    REFRESH INTERRUPTED: started {row['refresh_started_at']} and never finished "
            "(its process stopped); the next exchange retries it. If the provider then "
            "refuses the grant, reconnect: oauth2-server branches connect "
            f"{row['branch_id']} --provider {row['provider']}"
        )
    failing = row["health"]["refresh_failing"]
    if failing:
        lines += (
            f"\n    refresh failing since {failing['since']}: {failing['attempts']} attempt(s), "
            f"last {failing['last_error_at']} ({failing['error_class']}): "
            f"{row['last_refresh_error']}"
        )
    return lines


def cmd_grants(settings: Settings, args: argparse.Namespace) -> None:
    """Every upstream grant with its health (the service of GET /admin/upstream/grants)."""
    listed = _transaction(
        settings,
        lambda db: list_grants(db, settings.upstream_refresh_ahead, args.provider or None),
    )
    if args.json:
        print(json.dumps(listed))
        return
    for grant in listed["grants"]:
        failing = grant["refresh_failing"]
        detail = (
            f"failing since {failing['since']}, {failing['attempts']} attempt(s), "
            f"{failing['error_class']}"
            if failing
            else (grant["consent_error"] or "")
            if grant["state"] == "needs_consent"
            else ""
        )
        print(
            f"{grant['credential_id']}\t{grant['provider']}\t{grant['state']}\t"
            f"branches: {', '.join(grant['branches']) or '-'}\t"
            f"last refresh: {grant['last_refreshed_at'] or 'never'}\t"
            f"next: {grant['next_refresh_at'] or '-'}" + (f"\t{detail}" if detail else "")
        )
    counts = " ".join(f"{state}={n}" for state, n in listed["counts"].items())
    print(
        f"{len(listed['grants'])} grant(s): {counts}"
        + (" (truncated)" if listed["truncated"] else "")
    )


def _set_active(active: bool) -> Callable[[Settings, argparse.Namespace], None]:
    def command(settings: Settings, args: argparse.Namespace) -> None:
        body = {"active": active}
        actor = cli_actor()
        _transaction(settings, lambda db: registry.update_branch(db, actor, args.branch, body))
        state = "active" if active else "inactive"
        _print(args, {"branch_id": args.branch, "active": active}, f"{args.branch} is {state}")

    return command


def cmd_grant(settings: Settings, args: argparse.Namespace) -> None:
    actor = cli_actor()
    added = _transaction(settings, lambda db: registry.grant(db, actor, args.client, args.branch))
    what = "every branch" if args.branch == registry.ALL_BRANCHES else args.branch
    text = f"client {args.client} may broker tokens for {what}" + ("" if added else " (already)")
    _print(args, {"client_id": args.client, "branch_id": args.branch, "added": added}, text)


def cmd_ungrant(settings: Settings, args: argparse.Namespace) -> None:
    actor = cli_actor()
    _transaction(settings, lambda db: registry.ungrant(db, actor, args.client, args.branch))
    _print(
        args,
        {"client_id": args.client, "branch_id": args.branch, "removed": True},
        f"client {args.client} may no longer broker tokens for {args.branch}",
    )


def cmd_connect(settings: Settings, args: argparse.Namespace) -> None:
    keyring = load_keyring(settings)
    try:
        provider = load_provider(settings, args.provider)
    except (UnknownProvider, ProviderNotConfigured) as exc:
        raise CommandFailed(str(exc)) from None

    def call(db: Session) -> Any:
        return begin_connection(
            db,
            keyring,
            provider,
            args.branch,
            issuer_url=settings.issuer_url,
            state_ttl=settings.upstream_state_ttl,
        )

    start = _transaction(settings, call)
    value = {
        "branch_id": start.branch_id,
        "provider": start.provider,
        "authorization_url": start.authorization_url,
        "redirect_uri": start.redirect_uri,
        "expires_at": _iso(start.expires_at),
    }
    text = (
        f"Open this URL in a browser signed in to the {provider.spec.title} account of branch "
        f"{start.branch_id} (valid until {_iso(start.expires_at)}, once):\n\n"
        f"{start.authorization_url}\n"
    )
    _print(args, value, text)


def cmd_disconnect(settings: Settings, args: argparse.Namespace) -> None:
    keyring = load_keyring(settings)

    async def go(sessions: Sessions) -> Any:
        service = UpstreamService(settings, sessions, keyring)
        try:
            return await service.disconnect(
                args.branch,
                args.provider,
                force=args.force,
                audit=lambda result: cli_actor().event(
                    "admin_branch_disconnected", branch_id=args.branch, details=result.summary()
                ),
            )
        finally:
            await service.aclose()

    result = _run(settings, go)
    _print(
        args,
        result.summary(),
        f"disconnected {result.branch_id} from {result.provider}: {result.note}",
    )


def register(branches: argparse.ArgumentParser) -> None:
    """Add the `branches …` subcommands to `oauth2-server branches`'s parser."""
    commands = branches.add_subparsers(dest="branches_command", required=True)

    def command(name: str, func: Any, help_: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_)
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        parser.set_defaults(func=func)
        return parser

    create = command("create", cmd_create, "create a branch")
    create.add_argument("branch", help="external branch id (letters, digits, ._:-)")
    create.add_argument("--name", required=True, help="display name")
    create.add_argument("--contact-email", help="who to ask about this branch")
    create.add_argument("--google-account-id", help="Business Profile account, accounts/…")
    create.add_argument("--google-location-id", help="Business Profile location, locations/…")
    command("list", cmd_list, "list branches and the clients granted them")
    status = command("status", cmd_status, "upstream connection of each branch")
    status.add_argument("branch", nargs="?", help="branch id (default: every branch)")
    grants = command("grants", cmd_grants, "upstream grants and their health")
    grants.add_argument("--provider", choices=provider_names(), help="only this provider's")
    for name, active in (("activate", True), ("deactivate", False)):
        command(name, _set_active(active), f"{name} a branch").add_argument(
            "branch", help="branch id"
        )
    for name, func, help_ in (
        ("grant", cmd_grant, "let a client broker tokens for a branch ('*': every branch)"),
        ("ungrant", cmd_ungrant, "withdraw a client's grant of a branch"),
    ):
        parser = command(name, func, help_)
        parser.add_argument("branch", help="branch id, or '*' for every branch")
        parser.add_argument("--client", required=True, help="client_id")
    for name, func, help_ in (
        ("connect", cmd_connect, "print the provider's authorization URL for a branch"),
        ("disconnect", cmd_disconnect, "unlink a branch (revoking its grant if last)"),
    ):
        parser = command(name, func, help_)
        parser.add_argument("branch", help="branch id")
        parser.add_argument(
            "--provider", default="google", choices=provider_names(), help="default google"
        )
        if name == "disconnect":
            parser.add_argument(
                "--force",
                action="store_true",
                help="delete the stored tokens even if the provider cannot revoke them",
            )
