"""`oauth2-server audit query|summary|export|verify|seal` and `oauth2-server janitor`: the audit
trail for auditors (same filters as GET /admin/audit) and housekeeping."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from oauth2_server.audit import query as audit_query
from oauth2_server.audit import summary as audit_summary
from oauth2_server.audit import watermark as audit_watermark
from oauth2_server.audit.bounds import UNKNOWN_USERNAME_PURPOSE, unknown_username_subject
from oauth2_server.audit.log import record
from oauth2_server.cli import audit_chain as audit_chain_cli
from oauth2_server.cli import audit_export as audit_export_cli
from oauth2_server.cli import audit_tail
from oauth2_server.cli.support import (
    CommandFailed,
    Sessions,
    add_json,
    add_paging,
    cli_actor,
    options_body,
    print_json,
    run_async,
)
from oauth2_server.config import Settings
from oauth2_server.crypto.keyring import load_keyring
from oauth2_server.registry.paging import make_cursor_codec

# Every filter of GET /admin/audit (`audit.query.FILTER_DOCS`) is an option of the same
# name; `action` is repeatable and read separately.
FILTER_OPTIONS = {name: name for name in audit_query.FILTER_DOCS if name != "action"}


def _filter(args: Any) -> audit_query.AuditFilter:
    params = {name: [str(v)] for name, v in options_body(args, FILTER_OPTIONS).items()}
    if args.action:
        params["action"] = list(args.action)
    try:
        return audit_query.parse_filter(params)
    except audit_query.AuditQueryError as exc:
        raise CommandFailed(f"{exc.field}: {exc.message}") from None


def cmd_audit_query(settings: Settings, args: Any) -> None:
    f = _filter(args)
    try:
        limit = audit_query.parse_limit(str(args.limit))
    except audit_query.AuditQueryError as exc:
        raise CommandFailed(f"--limit: {exc.message}") from None
    codec = make_cursor_codec(load_keyring(settings))
    try:
        after = audit_watermark.parse_after(args.after)
        if after is not None:
            audit_watermark.check_watermark_mode(f, args.cursor)
    except audit_query.AuditQueryError as exc:
        raise CommandFailed(f"--{exc.field}: {exc.message}") from None

    actor = cli_actor()

    def page(s: Any) -> dict[str, Any]:
        if after is not None:  # a watermark read: sealed rows after it, in seal_seq order
            return audit_watermark.watermark_page(s, f, after, limit)
        return audit_query.query_page(s, codec, f, args.cursor, limit)

    async def go(sessions: Sessions) -> Any:
        async with sessions() as session, session.begin():
            return await session.run_sync(
                lambda s: audit_query.read_audited(s, actor, lambda: page(s), f)
            )

    print_json(run_async(settings, go))


def cmd_audit_summary(settings: Settings, args: Any) -> None:
    """Counts of the matching rows grouped by `--group-by` (the admin API's
    GET /admin/audit/summary), recorded as an `audit_read` row."""
    f = _filter(args)
    try:
        group_by = audit_summary.parse_group_by({"group_by": list(args.group_by or [])})
    except audit_query.AuditQueryError as exc:
        raise CommandFailed(f"--group-by: {exc.message}") from None
    actor = cli_actor()

    async def go(sessions: Sessions) -> Any:
        async with sessions() as session, session.begin():
            return await session.run_sync(
                lambda s: audit_query.read_audited(
                    s, actor, lambda: audit_summary.summarize(s, f, group_by), f
                )
            )

    print_json(run_async(settings, go))


def cmd_audit_username_digest(settings: Settings, args: Any) -> None:
    """The `subject` that failed sign-ins with this username (one no user has) are recorded
    under, per key of the keyring (the primary first): search with `audit query --subject`."""
    keyring = load_keyring(settings)
    order = [keyring.primary, *(kid for kid in keyring.keys if kid != keyring.primary)]
    keys = {kid: keyring.derive(UNKNOWN_USERNAME_PURPOSE, kid=kid) for kid in order}
    subjects = {kid: unknown_username_subject(key, args.username) for kid, key in keys.items()}
    print_json({"subject": subjects[keyring.primary], "by_key": subjects})


class ProgressBar:
    """`[#####.....] 45% 45,000/100,000 rows` redrawn in place on a terminal."""

    def __init__(self, total: int, stream: TextIO, width: int = 30) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.width = width

    def __call__(self, done: int) -> None:
        fraction = min(1.0, done / self.total)
        filled = int(self.width * fraction)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {fraction:4.0%} {done:,}/{self.total:,} rows")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


async def _record(sessions: Sessions, action: str, details: dict[str, Any]) -> None:
    """Write one audit row by the CLI's operator (`cli_actor`), in its own transaction:
    exports, seal, verify and janitor runs are themselves audit events (issue #11)."""
    event = cli_actor().event(action, details=details)
    async with sessions() as session, session.begin():
        await session.run_sync(lambda s: record(s, event))


def _audit_filters(parser: argparse.ArgumentParser) -> None:
    for name, doc in audit_query.FILTER_DOCS.items():
        option = "--" + name.replace("_", "-")
        if name == "action":
            parser.add_argument(option, action="append", help=doc)
        else:
            parser.add_argument(option, dest=name, help=doc)


def register(audit: argparse.ArgumentParser) -> None:
    """Add the `audit …` subcommands to `oauth2-server audit`'s parser (`janitor` is
    `cli.audit_chain.register_janitor`)."""
    audit_group = audit.add_subparsers(dest="audit_command", required=True)
    a = audit_group.add_parser("query", help="one page of audit rows (JSON)")
    _audit_filters(a)
    add_paging(a, audit_query.DEFAULT_LIMIT)
    a.add_argument("--after", help=audit_watermark.AFTER_DOC)
    add_json(a, always=True)
    a.set_defaults(func=cmd_audit_query)
    a = audit_group.add_parser("summary", help="counts of matching rows, grouped (JSON)")
    _audit_filters(a)
    a.add_argument("--group-by", action="append", required=True, help=audit_summary.GROUP_BY_DOC)
    add_json(a, always=True)
    a.set_defaults(func=cmd_audit_summary)
    a = audit_group.add_parser(
        "username-digest",
        help="the subject under which failed sign-ins with an unknown username are recorded",
    )
    a.add_argument("username", help="the username tried (case does not matter)")
    add_json(a, always=True)
    a.set_defaults(func=cmd_audit_username_digest)
    audit_export_cli.register(audit_group, _audit_filters)  # export, verify-export
    audit_tail.register(audit_group)
    audit_chain_cli.register(audit_group)  # verify, seal, checkpoints, repair
