"""`oauth2-server audit verify|seal|checkpoints|repair` and `oauth2-server janitor`: the hash
chain, its signed checkpoints and retention records (issue #11 item 5), and housekeeping.

Each run is itself an audit row by the CLI's operator (`cli_actor`): `audit_verified`,
`audit_sealed`, `audit_repaired`, `janitor_run`, carrying the checkpoint seq involved.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from oauth2_server.audit import checkpoints as audit_checkpoints
from oauth2_server.audit import janitor, sealing
from oauth2_server.audit import retention as audit_retention
from oauth2_server.audit.log import record
from oauth2_server.audit.query import AUDIT_READ
from oauth2_server.audit.verify import verify_audit_trail
from oauth2_server.cli.support import (
    CommandFailed,
    Sessions,
    add_json,
    cli_actor,
    print_json,
    run_async,
)
from oauth2_server.config import Settings

MAX_JWKS_BYTES = 1_000_000  # an auditor's JWKS file
MAX_COPY_BYTES = 200_000_000  # a checkpoint sink file read by verify


async def _record(sessions: Sessions, action: str, details: dict[str, Any]) -> None:
    """One audit row by the CLI's operator, in its own transaction."""
    event = cli_actor().event(action, details=details)
    async with sessions() as session, session.begin():
        await session.run_sync(lambda s: record(s, event))


async def signing_key(settings: Settings, sessions: Sessions) -> Any:
    """The issuer's current signing key (`oauth.keys.KeyStore`, loaded as `serve` loads
    it: the first key is made if the database has none)."""
    from oauth2_server.cli.main import _keystore  # the CLI's one way to load keys

    def load(session: Any) -> Any:
        store = _keystore(settings, session)
        store.ensure(session)
        return store.current

    async with sessions() as session, session.begin():
        return await session.run_sync(load)


def operator() -> str:
    """Who runs a command, as retention records name it: `cli:USER@HOST (unauthenticated)`."""
    actor = cli_actor()
    return f"cli:{actor.operator}@{actor.host} (unauthenticated)"


def _read_file(path: str, limit: int, option: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(limit + 1)
    except OSError as exc:
        raise CommandFailed(f"{option}: {exc}") from None
    if len(text) > limit:
        raise CommandFailed(f"{option}: larger than {limit} bytes")
    return text


def _verify_inputs(args: Any) -> tuple[tuple[int, str] | None, Any, list[str]]:
    """(--expect, --jwks document, --checkpoints lines), each checked."""
    expect = None
    if args.expect:
        seq, _, digest = args.expect.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            raise CommandFailed("--expect must look like SEQ:HASH (a head printed by verify)")
        expect = (int(seq), digest)
    jwks = None
    if args.jwks:
        try:
            jwks = json.loads(_read_file(args.jwks, MAX_JWKS_BYTES, "--jwks"))
        except ValueError:
            raise CommandFailed("--jwks: not a JSON document") from None
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise CommandFailed('--jwks: not a JWKS document ({"keys": [...]})')
    copies: list[str] = []
    if args.checkpoints:
        text = _read_file(args.checkpoints, MAX_COPY_BYTES, "--checkpoints")
        copies = [line for line in text.splitlines() if line.strip()]
    return expect, jwks, copies


def cmd_audit_verify(settings: Settings, args: Any) -> None:
    """Verify the chain against its signed checkpoints and retention records (exit 1 on a
    problem), recorded as an `audit_verified` row."""
    expect, jwks, copies = _verify_inputs(args)

    async def go(sessions: Sessions) -> Any:
        found = await verify_audit_trail(sessions, expect, jwks=jwks, copies=copies)
        outcome = {"ok": found.ok, "checked": found.checked, "head_seq": found.head_seq}
        outcome["checkpoint_seq"] = found.checkpoint_seq
        if found.problem is not None:
            outcome["problem"] = found.problem.kind
        await _record(sessions, "audit_verified", outcome)
        return found

    report = run_async(settings, go)
    print_json(
        {
            "ok": report.ok,
            "checked": report.checked,
            "pending": report.pending,
            "anchor_seq": report.anchor_seq,
            "head": f"{report.head_seq}:{report.head_hash}",
            "checkpoints": report.checkpoints,
            "checkpoint_seq": report.checkpoint_seq,
            "retention_records": report.retention_records,
            "stragglers": report.stragglers,
            "problem": report.problem.__dict__ if report.problem else None,
            "notes": report.notes,
        }
    )
    if not report.ok:
        raise SystemExit(1)


def cmd_audit_seal(settings: Settings, args: Any) -> None:
    """Seal rows up to the horizon now, signing a checkpoint per transaction."""
    delay = settings.audit_seal_delay if args.delay is None else args.delay
    sink = audit_checkpoints.Sink(settings.audit_checkpoint_sink)

    async def go(sessions: Sessions) -> sealing.SealRun:
        signer = await signing_key(settings, sessions)
        run = await sealing.seal_pending(
            sessions,
            delay,
            settings.janitor_batch_size,
            margin=settings.audit_seal_margin,
            signer=signer,
            published=lambda checkpoint: sink.push(checkpoint.as_dict()),
        )
        details = {"sealed": run.sealed, "delay": delay, "checkpoint_seq": run.checkpoint_seq}
        await _record(sessions, "audit_sealed", details)
        return run

    run = run_async(settings, go)
    print_json({"sealed": run.sealed, "checkpoint_seq": run.checkpoint_seq})


def cmd_audit_checkpoints(settings: Settings, args: Any) -> None:
    """The newest `--limit` signed checkpoints (and with `--retention` every retention
    record), oldest first, with their JWS; the listing is an `audit_read` row
    (`details.read` "checkpoints", `rows`, and `retention_records` with `--retention`)
    in the same transaction."""
    actor = cli_actor()

    def read(session: Any) -> dict[str, Any]:
        found = audit_checkpoints.list_checkpoints(session, args.limit)
        answer: dict[str, Any] = {"checkpoints": [c.as_dict() for c in found]}
        details: dict[str, Any] = {"read": "checkpoints", "limit": args.limit, "rows": len(found)}
        if args.retention:
            records = audit_retention.all_records(session)
            answer["retention"] = [audit_retention.record_json(r) for r in records]
            details["retention_records"] = len(records)
        record(session, actor.event(AUDIT_READ, details=details))
        return answer

    async def go(sessions: Sessions) -> dict[str, Any]:
        async with sessions() as session, session.begin():
            return await session.run_sync(read)

    print_json(run_async(settings, go))


def cmd_audit_repair(settings: Settings, args: Any) -> None:
    """Seal stragglers (unsealed rows inside the sealed range) at the head of the chain,
    with a checkpoint, recorded as an `audit_repaired` row; `--dry-run` only lists them."""
    sink = audit_checkpoints.Sink(settings.audit_checkpoint_sink)
    batch = settings.janitor_batch_size

    async def go(sessions: Sessions) -> sealing.Repair:
        signer = await signing_key(settings, sessions)
        repair = sealing.Repair()
        while True:
            async with sessions() as session, session.begin():
                done = await session.run_sync(
                    sealing.repair_batch, signer, batch, repair, args.dry_run
                )
            if done < 0:
                raise CommandFailed("another sealer holds the chain; try again", 4)
            if done < batch:
                break
        for checkpoint in repair.checkpoints:
            sink.push(checkpoint.as_dict())
        if not args.dry_run and repair.rows:
            await _record(sessions, "audit_repaired", repair.details())
        return repair

    repair = run_async(settings, go)
    print_json({"dry_run": bool(args.dry_run), **repair.details()})


def cmd_janitor(settings: Settings, args: Any) -> None:
    """One janitor run, signing checkpoints and retention records with the current key."""

    async def go(sessions: Sessions) -> janitor.JanitorReport:
        signer = await signing_key(settings, sessions)
        report = await janitor.run_janitor(
            settings,
            sessions,
            seal=not args.no_seal,
            batch_size=args.batch_size,
            signer=signer,
            actor=f"janitor ({operator()})",
        )
        await _record(sessions, "janitor_run", report.as_dict())
        return report

    print_json(run_async(settings, go).as_dict())


def register(audit_group: Any) -> None:
    """Add `audit verify|seal|checkpoints|repair` (to `audit_group`)."""
    a = audit_group.add_parser(
        "verify", help="check the hash chain against signed checkpoints; exit 1 on tampering"
    )
    a.add_argument("--expect", help="SEQ:HASH of a head recorded earlier, to check too")
    a.add_argument("--jwks", help="verify signatures with this JWKS file (an auditor's copy)")
    a.add_argument(
        "--checkpoints",
        type=str,
        help="a checkpoint copy (the OAUTH2_AUDIT_CHECKPOINT_SINK file): each must be present",
    )
    add_json(a, always=True)
    a.set_defaults(func=cmd_audit_verify)
    a = audit_group.add_parser("seal", help="seal pending rows into the hash chain now")
    a.add_argument("--delay", type=float, help="seconds (default OAUTH2_AUDIT_SEAL_DELAY)")
    add_json(a, always=True)
    a.set_defaults(func=cmd_audit_seal)
    a = audit_group.add_parser("checkpoints", help="signed checkpoints (and retention records)")
    a.add_argument("--limit", type=int, default=100, help="newest N (default 100, most 10000)")
    a.add_argument("--retention", action="store_true", help="also every retention record")
    add_json(a, always=True)
    a.set_defaults(func=cmd_audit_checkpoints)
    a = audit_group.add_parser(
        "repair", help="seal stragglers (unsealed rows inside the sealed range), audited"
    )
    a.add_argument("--dry-run", action="store_true", help="list them, change nothing")
    add_json(a, always=True)
    a.set_defaults(func=cmd_audit_repair)


def register_janitor(j: argparse.ArgumentParser) -> None:
    """Add `janitor`'s options to its parser."""
    j.add_argument("--batch-size", type=int, help="default OAUTH2_JANITOR_BATCH_SIZE")
    j.add_argument("--no-seal", action="store_true", help="skip sealing")
    add_json(j, always=True)
    j.set_defaults(func=cmd_janitor)
