"""`oauth2-server audit export` and `audit verify-export` (issue #11 item 6): exports an
auditor can hand over, and their offline check.

`export --output FILE` writes FILE through a hidden partial file beside it, renamed over
FILE only once every row is written and flushed to disk, then `FILE.manifest.json` (the
signed manifest, `audit.manifest`) the same way: a killed or failed export leaves
nothing at either final path. The service is `audit.export`, the one the admin API's
GET /admin/audit/export runs.

`verify-export FILE` needs no database and no server (`audit.export_verify`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from oauth2_server.audit import export as audit_export
from oauth2_server.audit import query as audit_query
from oauth2_server.audit.export_verify import verify_export
from oauth2_server.audit.signing import public_keys
from oauth2_server.cli.audit_chain import signing_key
from oauth2_server.cli.support import (
    CommandFailed,
    Sessions,
    cli_actor,
    print_json,
    quiet_broken_pipe,
    run_async,
)
from oauth2_server.config import Settings

MANIFEST_SUFFIX = ".manifest.json"


def partial_path(output: str | Path) -> Path:
    """Where a file bound for `output` is written until it is complete: a hidden file
    beside it (same directory, so the final rename is atomic)."""
    final = Path(output)
    return final.with_name(f".{final.name}.partial-{os.getpid()}")


def _open_partial(stack: ExitStack, final: str | Path) -> tuple[Path, IO[bytes]]:
    partial = partial_path(final)
    try:
        out = stack.enter_context(open(partial, "xb"))  # noqa: SIM115
    except OSError as exc:
        raise CommandFailed(f"--output: {exc}") from None
    stack.callback(partial.unlink, missing_ok=True)  # gone once renamed
    return partial, out


def _place(out: IO[bytes], partial: Path, final: str | Path) -> None:
    """Flush `out` to disk and rename its partial file over `final`."""
    out.flush()
    os.fsync(out.fileno())
    try:
        partial.replace(final)
    except OSError as exc:
        raise CommandFailed(f"--output: {exc}") from None


def write_file(final: str | Path, data: bytes) -> None:
    """Write `data` to `final` through a partial file and a rename."""
    with ExitStack() as stack:
        partial, out = _open_partial(stack, final)
        out.write(data)
        _place(out, partial, final)


def _manifest_target(args: Any, to_file: bool) -> str | None:
    if args.manifest:
        return str(args.manifest)
    return str(args.output) + MANIFEST_SUFFIX if to_file else None


def cmd_audit_export(settings: Settings, args: Any) -> None:
    """Stream the matching rows to stdout, or to `--output` (module docstring), and write
    the signed manifest to `--manifest` (default `OUTPUT.manifest.json`; none for stdout
    unless `--manifest` is given)."""
    from oauth2_server.cli.audit import ProgressBar, _filter

    f = _filter(args)
    try:
        encoder = audit_export.RowEncoder(args.format, args.csv_null, args.bom)
    except audit_query.AuditQueryError as exc:
        raise CommandFailed(f"--{exc.field.replace('_', '-')}: {exc.message}") from None
    to_file = bool(args.output and args.output != "-")
    manifest_path = _manifest_target(args, to_file)
    with ExitStack() as stack:
        if to_file:
            partial, out = _open_partial(stack, args.output)
        else:
            out = sys.stdout.buffer
        show_bar = sys.stderr.isatty() and not (not to_file and sys.stdout.isatty())

        async def go(sessions: Sessions) -> audit_export.ExportJob:
            key = await signing_key(settings, sessions)
            output = os.path.basename(args.output) if to_file else "stdout"
            job = audit_export.ExportJob(
                f, encoder, cli_actor(), key, settings.issuer_url, output, args.batch_size
            )
            await audit_export.start_export(sessions, job)
            if show_bar:
                async with sessions() as session:
                    total = await session.run_sync(audit_query.count_rows, job.query)
                job.progress = ProgressBar(total, sys.stderr)
            async for chunk in audit_export.stream_export(sessions, job):
                out.write(chunk)
            if isinstance(job.progress, ProgressBar):
                job.progress.close()
            return job

        try:
            job = run_async(settings, go)
            out.flush()
            if to_file:
                _place(out, partial, args.output)
        except BrokenPipeError:
            quiet_broken_pipe()
            return
    assert job.document is not None
    if manifest_path is not None:
        write_file(manifest_path, json.dumps(job.document, indent=2).encode() + b"\n")
    manifest = job.document["manifest"]
    if to_file or manifest_path is not None:  # stderr stays quiet for a plain pipe
        summary = {"rows": manifest["rows"], "output": args.output if to_file else "stdout"}
        summary.update(manifest=manifest_path, export_id=job.export_id, sha256=manifest["sha256"])
        print(json.dumps(summary), file=sys.stderr)


def _read_json(path: str, option: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandFailed(f"{option}: cannot read {path}: {exc}") from None


def cmd_audit_verify_export(settings: Settings | None, args: Any) -> None:
    """Verify an export offline (`audit.export_verify`): print the report as JSON; exit
    status 0 when it holds, 1 naming the first problem (the first bad line) otherwise."""
    path = Path(args.file)
    document = _read_json(args.manifest or args.file + MANIFEST_SUFFIX, "--manifest")
    jwks = None
    if args.jwks:
        raw = _read_json(args.jwks, "--jwks")
        try:
            jwks = public_keys(raw)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CommandFailed(f"--jwks: {args.jwks} is not a JWKS document: {exc}") from None
    try:
        report = verify_export(path, document, jwks)
    except OSError as exc:
        raise CommandFailed(f"{args.file}: {exc}") from None
    print_json(report.as_dict())
    if not report.ok:
        print(f"oauth2-server: {report.problems[0]}", file=sys.stderr)
        raise SystemExit(1)


def register(audit_group: Any, add_filters: Any) -> None:
    """Add `export` and `verify-export` to `oauth2-server audit`'s subparsers;
    `add_filters(parser)` adds the audit query filters."""
    a = audit_group.add_parser("export", help="stream every matching row as CSV or JSON Lines")
    add_filters(a)
    a.add_argument("--format", choices=["csv", "jsonl"], required=True, help="CSV, or JSON Lines")
    a.add_argument(
        "--output",
        help="file to write (default stdout); written as a hidden partial file beside it "
        "and renamed once complete",
    )
    a.add_argument(
        "--manifest",
        help=f"where to write the signed manifest (default OUTPUT{MANIFEST_SUFFIX}; "
        "with stdout, only when given)",
    )
    a.add_argument(
        "--csv-null",
        default=audit_export.CSV_NULL,
        help=f"CSV text of a NULL value (default {audit_export.CSV_NULL}; an empty string is "
        "an empty cell); a value equal to it, or starting with ' or a formula character, "
        "gets a leading '",
    )
    a.add_argument("--bom", action="store_true", help="CSV: start with a UTF-8 byte-order mark")
    a.add_argument("--batch-size", type=int, default=1000, help="rows per read")
    a.set_defaults(func=cmd_audit_export)
    v = audit_group.add_parser(
        "verify-export",
        help="check an export and its signed manifest offline; exit 1 naming the first problem",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("file", help="the export (CSV or JSON Lines)")
    v.add_argument("--manifest", help=f"its manifest (default FILE{MANIFEST_SUFFIX})")
    v.add_argument(
        "--jwks", help="the issuer's JWKS (a saved copy of its jwks_uri, ISSUER/oauth2/jwks)"
    )
    v.set_defaults(func=cmd_audit_verify_export, needs_settings=False)
