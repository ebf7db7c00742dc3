"""`oauth2-server audit query|summary|export|verify|seal` and `oauth2-server janitor`: the audit
trail for auditors (same filters as GET /admin/audit) and housekeeping."""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

from oauth2_server.audit import chain as audit_chain
from oauth2_server.audit import export as audit_export
from oauth2_server.audit import janitor
from oauth2_server.audit import query as audit_query
from oauth2_server.audit import summary as audit_summary
from oauth2_server.audit.bounds import UNKNOWN_USERNAME_PURPOSE, unknown_username_subject
from oauth2_server.audit.log import record
from oauth2_server.cli.support import (
    CommandFailed,
    Sessions,
    add_json,
    add_paging,
    cli_actor,
    options_body,
    print_json,
    quiet_broken_pipe,
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

    actor = cli_actor()

    async def go(sessions: Sessions) -> Any:
        async with sessions() as session, session.begin():
            return await session.run_sync(
                lambda s: audit_query.read_audited(
                    s, actor, lambda: audit_query.query_page(s, codec, f, args.cursor, limit), f
                )
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


def _partial_path(output: str) -> Path:
    """Where an export to `output` is written until it is complete: a hidden file beside
    it (same directory, so the final rename is atomic)."""
    final = Path(output)
    return final.with_name(f".{final.name}.partial-{os.getpid()}")


def cmd_audit_export(settings: Settings, args: Any) -> None:
    """Stream the matching rows to stdout, or to `--output`: written to a partial file
    beside it and renamed over it only once every row is written and flushed to disk, so
    an export that fails or is killed never leaves a file at the final path (a killed
    one leaves only its hidden `.NAME.partial-PID` file)."""
    f = _filter(args)
    to_file = bool(args.output and args.output != "-")
    partial = _partial_path(args.output) if to_file else None
    with ExitStack() as stack:
        if partial is not None:
            try:
                out: TextIO = stack.enter_context(
                    open(partial, "x", newline="", encoding="utf-8")  # noqa: SIM115
                )
            except OSError as exc:
                raise CommandFailed(f"--output: {exc}") from None
            stack.callback(partial.unlink, missing_ok=True)  # gone once renamed
        else:
            out = sys.stdout
        show_bar = sys.stderr.isatty() and not (out is sys.stdout and sys.stdout.isatty())
        writer = audit_export.RowWriter(out, args.format, args.csv_null, args.bom)
        described = {
            "filters": f.described(),
            "format": args.format,
            "output": os.path.basename(args.output) if to_file else "stdout",
        }

        async def go(sessions: Sessions) -> int:
            await _record(sessions, audit_query.AUDIT_EXPORT_STARTED, described)
            bar = None
            if show_bar:
                async with sessions() as session:
                    bar = ProgressBar(await session.run_sync(audit_query.count_rows, f), sys.stderr)
            total = await audit_export.export(sessions, f, writer, args.batch_size, bar)
            if bar is not None:
                bar(total)
                bar.close()
            await _record(sessions, audit_query.AUDIT_EXPORTED, {**described, "rows": total})
            return total

        try:
            total = run_async(settings, go)
            out.flush()
            if partial is not None:
                os.fsync(out.fileno())
                try:
                    partial.replace(args.output)
                except OSError as exc:
                    raise CommandFailed(f"--output: {exc}") from None
        except BrokenPipeError:
            quiet_broken_pipe()
    if to_file:
        print(json.dumps({"rows": total, "output": args.output}), file=sys.stderr)


def cmd_audit_verify(settings: Settings, args: Any) -> None:
    expect = None
    if args.expect:
        seq, _, digest = args.expect.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            raise CommandFailed("--expect must look like SEQ:HASH (a head printed by verify)")
        expect = (int(seq), digest)

    async def go(sessions: Sessions) -> Any:
        found = await audit_chain.verify_chain(sessions, expect)
        outcome = {"ok": found.ok, "checked": found.checked, "head_seq": found.head_seq}
        if found.problem is not None:
            outcome["problem"] = found.problem.kind
        await _record(sessions, "audit_verified", outcome)
        return found

    report = run_async(settings, go)
    result = {
        "ok": report.ok,
        "checked": report.checked,
        "pending": report.pending,
        "anchor_seq": report.anchor_seq,
        "head": f"{report.head_seq}:{report.head_hash}",
        "problem": report.problem.__dict__ if report.problem else None,
        "notes": report.notes,
    }
    print_json(result)
    if not report.ok:
        raise SystemExit(1)


def cmd_audit_seal(settings: Settings, args: Any) -> None:
    delay = settings.audit_seal_delay if args.delay is None else args.delay
    batch = settings.janitor_batch_size

    async def go(sessions: Sessions) -> int:
        sealed = await audit_chain.seal_pending(sessions, delay, batch)
        await _record(sessions, "audit_sealed", {"sealed": sealed, "delay": delay})
        return sealed

    print_json({"sealed": run_async(settings, go)})


def cmd_janitor(settings: Settings, args: Any) -> None:
    async def go(sessions: Sessions) -> janitor.JanitorReport:
        report = await janitor.run_janitor(
            settings, sessions, seal=not args.no_seal, batch_size=args.batch_size
        )
        await _record(sessions, "janitor_run", report.as_dict())
        return report

    print_json(run_async(settings, go).as_dict())


def _audit_filters(parser: argparse.ArgumentParser) -> None:
    for name, doc in audit_query.FILTER_DOCS.items():
        option = "--" + name.replace("_", "-")
        if name == "action":
            parser.add_argument(option, action="append", help=doc)
        else:
            parser.add_argument(option, dest=name, help=doc)


def register(sub: Any) -> None:
    """Add `audit …` and `janitor` to `oauth2-server`'s parser (`sub`: its subparsers)."""
    audit = sub.add_parser("audit", help="query, export and verify the audit trail")
    audit_group = audit.add_subparsers(dest="audit_command", required=True)
    a = audit_group.add_parser("query", help="one page of audit rows (JSON)")
    _audit_filters(a)
    add_paging(a, audit_query.DEFAULT_LIMIT)
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
    a = audit_group.add_parser("export", help="stream every matching row as CSV or JSON Lines")
    _audit_filters(a)
    a.add_argument("--format", choices=["csv", "jsonl"], required=True, help="CSV, or JSON Lines")
    a.add_argument(
        "--output",
        help="file to write (default stdout); written as a hidden partial file beside it "
        "and renamed once complete",
    )
    a.add_argument(
        "--csv-null",
        default=audit_export.CSV_NULL,
        help=f"CSV text of a NULL value (default {audit_export.CSV_NULL}; an empty string is "
        "an empty cell); a value equal to it is escaped with a leading '",
    )
    a.add_argument("--bom", action="store_true", help="CSV: start with a UTF-8 byte-order mark")
    a.add_argument("--batch-size", type=int, default=1000, help="rows per read")
    a.set_defaults(func=cmd_audit_export)
    a = audit_group.add_parser("verify", help="recompute the hash chain; exit 1 on tampering")
    a.add_argument("--expect", help="SEQ:HASH of a head recorded earlier, to check too")
    add_json(a, always=True)
    a.set_defaults(func=cmd_audit_verify)
    a = audit_group.add_parser("seal", help="seal pending rows into the hash chain now")
    a.add_argument("--delay", type=float, help="seconds (default OAUTH2_AUDIT_SEAL_DELAY)")
    add_json(a, always=True)
    a.set_defaults(func=cmd_audit_seal)

    j = sub.add_parser("janitor", help="partitions, sealing, retention, expired rows")
    j.add_argument("--batch-size", type=int, help="default OAUTH2_JANITOR_BATCH_SIZE")
    j.add_argument("--no-seal", action="store_true", help="skip sealing")
    add_json(j, always=True)
    j.set_defaults(func=cmd_janitor)
